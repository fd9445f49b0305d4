"""A teacher that is a model on this machine (HF directory, GGUF file or known name), answering
through our batched sampler; its generations stream to a JSONL file, so a killed run resumes."""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Sequence

from srit_jax.conversion import loading
from srit_jax.generation.jsonl import generate_texts
from srit_jax.generation.next_token import SamplingSettings
from srit_jax.tasks import prompts
from srit_jax.tasks.example import Example
from srit_jax.teachers.base import Teacher, family_of


class LocalModelTeacher(Teacher):
  needs_all_processes = True  # its model generates on every device of the run

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
      completions = generate_texts(
        model,
        records,
        self.generations_path or pathlib.Path(scratch) / "generations.jsonl",
        max_new_tokens=self.max_new_tokens,
        settings=self.settings,
        num_samples=num_samples,
        seed=self.seed,
        batch_size=self.batch_size,
        chat_template=self.chat_template,
        progress=self.progress,
      )
    return [[c.text for c in samples] for samples in completions]
