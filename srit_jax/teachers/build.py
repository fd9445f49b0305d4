"""A teacher from its config block (`config.teacher` of configs/demos.py)."""

from __future__ import annotations

import pathlib

from srit_jax import io
from srit_jax.generation.next_token import SamplingSettings
from srit_jax.teachers.base import Teacher

KINDS = ("local", "openai", "precomputed", "reference")


def make_teacher(config, workdir: str | pathlib.Path, *, progress: bool = True) -> Teacher:
  workdir = io.as_path(workdir)
  kind = config.kind
  if kind == "local":
    from srit_jax.teachers.local import LocalModelTeacher

    return LocalModelTeacher(
      config.model,
      family=config.family or None,
      generations_path=workdir / "teacher_generations.jsonl",
      max_new_tokens=config.max_new_tokens,
      settings=SamplingSettings(config.temperature, config.top_k, config.top_p),
      batch_size=config.batch_size,
      seed=config.seed,
      dtype=config.dtype,
      progress=progress,
    )
  if kind == "openai":
    from srit_jax.teachers.http import OpenAICompatibleTeacher

    return OpenAICompatibleTeacher(
      config.base_url,
      config.model,
      family=config.family or None,
      api_key_env=config.api_key_env,
      cache_path=workdir / "teacher_cache.jsonl",
      concurrency=config.concurrency,
      max_retries=config.max_retries,
      timeout_s=config.timeout_s,
      temperature=config.temperature,
      max_tokens=config.max_new_tokens,
      seed=config.seed,
      progress=progress,
    )
  if kind == "precomputed":
    from srit_jax.teachers.precomputed import read_teacher

    return read_teacher(config.reader, config.path, split=config.split)
  if kind == "reference":
    from srit_jax.teachers.reference import ReferenceSolutionTeacher

    return ReferenceSolutionTeacher()
  raise ValueError(f"teacher kind {kind!r} is not one of {KINDS}")
