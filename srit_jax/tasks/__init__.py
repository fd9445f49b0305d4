"""Benchmarks as `Example`s: loaders, prompts, answer extraction and scoring."""

from srit_jax.tasks.answers import extract_answer, is_correct
from srit_jax.tasks.example import Example
from srit_jax.tasks.prompts import COT, DIRECT, prompt
from srit_jax.tasks.registry import TASKS, get_task, load_examples
from srit_jax.tasks.rows import DataError

__all__ = [
  "COT",
  "DIRECT",
  "TASKS",
  "DataError",
  "Example",
  "extract_answer",
  "get_task",
  "is_correct",
  "load_examples",
  "prompt",
]
