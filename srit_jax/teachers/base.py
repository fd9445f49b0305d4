"""The teacher interface."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from srit_jax.tasks.example import Example

_FAMILIES = (
  ("smollm", "smollm"),
  ("llama", "llama"),
  ("mistral", "mistral"),
  ("mixtral", "mistral"),
  ("qwen", "qwen"),
  ("gemma", "gemma"),
  ("palm", "palm"),
  ("davinci", "gpt"),
  ("gpt", "gpt"),
  ("chatgpt", "gpt"),
)


def family_of(model: str) -> str:
  """A model family from a model name or path ("SmolLM2-135M" → "smollm"), or "unknown"."""
  lowered = model.lower()
  return next((family for key, family in _FAMILIES if key in lowered), "unknown")


class TeacherError(RuntimeError):
  """A teacher could not answer; the message names the question."""


class Teacher(abc.ABC):
  name: str  # what wrote the rationales, as recorded in every demonstration
  family: str  # model family, for in-family / out-family labels
  # Whether every process of a multi-process run must take part (a model sharded over all
  # devices); otherwise process 0 asks alone and the others wait for its files.
  needs_all_processes: bool = False

  @abc.abstractmethod
  def rationales(self, examples: Sequence[Example], num_samples: int) -> list[list[str]]:
    """Up to `num_samples` chain-of-thought answers per example (fewer where the teacher has fewer)."""

  def examples(self) -> list[Example] | None:
    """The questions a teacher brings along (precomputed outputs); None when it answers any question."""
    return None
