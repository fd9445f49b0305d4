"""`srit-jax generate`: a model's outputs for a file of prompts, streamed to JSONL."""

from __future__ import annotations

import json
import pathlib

from srit_jax import sharding
from srit_jax.conversion import loading
from srit_jax.generation import batched as generation
from srit_jax.generation.sampler import SamplingSettings


def read_prompts(path: str | pathlib.Path) -> list[dict]:
  """Records with a "prompt" field from a JSONL file, or one prompt per line of a text file."""
  path = pathlib.Path(path)
  records = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      if path.suffix != ".jsonl":
        records.append({"prompt": line.rstrip("\n"), "id": number})
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
      if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
        raise ValueError(f"{path}:{number}: field 'prompt' must be a non-empty string")
      records.append(record)
  if not records:
    raise ValueError(f"{path}: holds no prompts")
  return records


def run(config, out: str | pathlib.Path) -> pathlib.Path:
  records = (
    read_prompts(config.prompts_file)
    if config.prompts_file
    else [{"prompt": p, "id": i} for i, p in enumerate(config.prompts)]
  )
  mesh = sharding.make_mesh(sharding.MeshConfig(config.mesh.data, config.mesh.fsdp, config.mesh.tensor))
  model = loading.load_model(config.model, mesh=mesh, dtype=config.dtype, progress=True)
  settings = SamplingSettings(config.temperature, config.top_k, config.top_p)
  path = generation.generate_to_jsonl(
    model.config,
    model.params,
    model.tokenizer,
    records,
    out,
    max_new_tokens=config.max_new_tokens,
    settings=settings,
    num_samples=config.num_samples,
    seed=config.seed,
    batch_size=config.batch_size,
    stop_strings=tuple(config.stop_strings),
    chat_template=config.chat_template,
    mesh=mesh,
  )
  print(path)
  return path
