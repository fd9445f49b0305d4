"""A teacher that is a model on this machine (HF directory, GGUF file or known name), answering
through our batched sampler; its generations stream to a JSONL file, so a killed run resumes."""

from __future__ import annotations

import json
import pathlib
import tempfile
from collections.abc import Sequence

from srit_jax.conversion import loading
from srit_jax.generation import batched as generation
from srit_jax.generation.sampler import SamplingSettings
from srit_jax.tasks import prompts
from srit_jax.tasks.example import Example
from srit_jax.teachers.base import Teacher, family_of


class LocalModelTeacher(Teacher):
  def __init__(
    self,
    model: str | loading.LoadedModel,
    *,
    family: str | None = None,
    generations_path: str | pathlib.Path | None = None,
    max_new_tokens: int = 256,
    settings: SamplingSettings | None = None,
    batch_size: int = 16,
    seed: int = 0,
    chat_template: bool = True,
    dtype: str = "float32",
    mesh=None,
    progress: bool = True,
  ):
    self.name = str(model) if not isinstance(model, loading.LoadedModel) else "local-model"
    self.family = family or family_of(self.name)
    self._model = model
    self.generations_path = generations_path
    self.max_new_tokens = max_new_tokens
    self.settings = settings or SamplingSettings(temperature=0.7, top_k=0, top_p=0.95)
    self.batch_size = batch_size
    self.seed = seed
    self.chat_template = chat_template
    self.dtype = dtype
    self.mesh = mesh
    self.progress = progress

  def _loaded(self) -> loading.LoadedModel:
    if not isinstance(self._model, loading.LoadedModel):
      self._model = loading.load_model(self._model, mesh=self.mesh, dtype=self.dtype, progress=self.progress)
    return self._model

  def rationales(self, examples: Sequence[Example], num_samples: int) -> list[list[str]]:
    model = self._loaded()
    records = [{"prompt": prompts.prompt(e, prompts.COT), "id": f"{e.task}/{e.id}"} for e in examples]
    with tempfile.TemporaryDirectory() as scratch:
      path = pathlib.Path(self.generations_path or pathlib.Path(scratch) / "generations.jsonl")
      generation.generate_to_jsonl(
        model.config,
        model.params,
        model.tokenizer,
        records,
        path,
        max_new_tokens=self.max_new_tokens,
        settings=self.settings,
        num_samples=num_samples,
        seed=self.seed,
        batch_size=self.batch_size,
        chat_template=self.chat_template,
        mesh=model.mesh,
        progress=self.progress,
      )
      answers: list[list[str]] = [[""] * num_samples for _ in examples]
      for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        answers[row["index"]][row["sample"]] = row["completion"]
    return answers
