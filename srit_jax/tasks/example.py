"""One benchmark question, whatever its source: the unit that prompts, teachers and scoring share."""

from __future__ import annotations

import dataclasses

NUMBER = "number"  # gold is a decimal string ("18", "0.75"); compared numerically
CHOICE = "choice"  # gold is an option letter ("A".."E"); `choices` holds the option texts
LATEX = "latex"  # gold is a LaTeX expression (MATH's \boxed{} content); compared after normalisation
ANSWER_TYPES = (NUMBER, CHOICE, LATEX)

LETTERS = "ABCDEFGHIJ"


@dataclasses.dataclass(frozen=True)
class Example:
  task: str
  id: str
  question: str
  gold: str
  answer_type: str
  choices: tuple[str, ...] = ()
  solution: str = ""  # a worked solution shipped with the dataset (GSM8K, AQuA, MATH, synthetic), if any

  def __post_init__(self):
    if self.answer_type not in ANSWER_TYPES:
      raise ValueError(f"{self.task}/{self.id}: answer_type {self.answer_type!r} is not one of {ANSWER_TYPES}")
    if self.answer_type == CHOICE and self.gold not in LETTERS[: len(self.choices)]:
      raise ValueError(f"{self.task}/{self.id}: gold {self.gold!r} is not a letter of its {len(self.choices)} choices")

  def to_json(self) -> dict:
    return dataclasses.asdict(self) | {"choices": list(self.choices)}

  @classmethod
  def from_json(cls, obj: dict) -> Example:
    return cls(**{**obj, "choices": tuple(obj.get("choices", ()))})
