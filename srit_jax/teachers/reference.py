"""The dataset's own worked solutions as a teacher (GSM8K, AQuA, MATH, the synthetic tasks): an
offline, always-correct teacher that needs no model — the baseline every teacher is measured by."""

from __future__ import annotations

from collections.abc import Sequence

from srit_jax.tasks.example import Example
from srit_jax.teachers.base import Teacher


class ReferenceSolutionTeacher(Teacher):
  name = "reference-solutions"
  family = "reference"

  def rationales(self, examples: Sequence[Example], num_samples: int) -> list[list[str]]:
    return [[e.solution] if e.solution else [] for e in examples]
