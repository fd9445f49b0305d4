"""`srit-jax generate`: a model's outputs for a file of prompts, streamed to JSONL."""

from __future__ import annotations

import pathlib

from srit_jax import io, sharding
from srit_jax.configs import checks
from srit_jax.conversion import loading
from srit_jax.generation.jsonl import generate_to_jsonl
from srit_jax.generation.next_token import SamplingSettings


def read_prompts(path: str | pathlib.Path) -> list[dict]:
  """Records with a "prompt" field from a .jsonl or .json file, else one prompt per line of text."""
  path = io.as_path(path)
  if path.suffix in (".jsonl", ".json"):
    records = [record for _, record in io.read_records(path, required={"prompt": str})]
  else:
    lines = io.read_text(path).split("\n")
    records = [{"prompt": line, "id": number} for number, line in enumerate(lines, start=1) if line.strip()]
  if not records:
    raise io.DataError(f"{path}: holds no prompts")
  return records


def run(config, out: str | pathlib.Path) -> pathlib.Path:
  checks.check(config, "generate")
  records = (
    read_prompts(config.prompts_file)
    if config.prompts_file
    else [{"prompt": p, "id": i} for i, p in enumerate(config.prompts)]
  )
  mesh = sharding.mesh_from_config(config.mesh)
  model = loading.load_model(config.model, mesh=mesh, dtype=config.dtype, param_dtype=config.dtype, progress=True)
  settings = SamplingSettings(config.temperature, config.top_k, config.top_p)
  if model.tokenizer is None:
    raise ValueError(f"{config.model}: has no tokenizer (tokenizer.json or tokenizer.model) to encode prompts")
  path = generate_to_jsonl(
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
    model_identity=model.identity,
    on_change="error",
  )
  print(path)
  return path
