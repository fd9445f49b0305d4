"""The arithmetic written out in a worked answer ("4 * 8 = $32", "7 x $2 = $14", "(3 + 4) * 2 = 14"),
each step recomputed: an answer can reach a wrong result by a slip of calculation in an
otherwise right chain, or by a wrong chain of right calculations. Evaluation reports how many
answers hold at least one wrong step, and how accurate the answers without one are.

A step is an expression of numbers (an optional "$", thousands commas, a trailing "%" read as
a hundredth), + - * / // x × ÷ and parentheses, then "=" and the stated number. A stated
result with decimals may be rounded to them; a whole number must be exact, except a quotient
said to leave a remainder ("37 / 4 = 9 with a remainder of 1": whole division). Steps written in
words ("half of 10 is 5") or chained ("3 + 4 = 7 + 1 = 8": only the first) are not read, so
the counts are a lower bound on the slips made.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from srit_jax.tasks import answers

_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_OPERAND = rf"\(*\s*\$?\s*{_NUMBER}%?\s*\)*"
_OPERATOR = r"(?:\s*(?:[-+*/×÷]|//)\s*|\s+x\s+)"
_STEP = re.compile(
  rf"(?<![\w.,:$*/+×÷-])(?P<expression>{_OPERAND}(?:{_OPERATOR}{_OPERAND})+)\s*=\s*\$?\s*(?P<stated>-?{_NUMBER})(?![\d,]*\d)"
)


@dataclasses.dataclass(frozen=True)
class Step:
  expression: str  # as written, "4 * 8"
  stated: str  # the number written after "=", "32"
  value: float  # the expression recomputed
  stated_at: int  # where the stated number starts in the text

  @property
  def correct(self) -> bool:
    stated = float(self.stated.replace(",", ""))
    decimals = len(self.stated.partition(".")[2])
    tolerance = 0.5 * 10.0**-decimals if decimals else 0.0
    return abs(self.value - stated) <= tolerance + 1e-9 * max(1.0, abs(stated))


def _as_python(expression: str) -> str:
  text = re.sub(r"\s+x\s+", " * ", expression).replace("×", "*").replace("÷", "/").replace("$", "")
  text = answers.THOUSANDS_COMMA.sub("", text)
  return re.sub(rf"({_NUMBER})%", r"(\1 / 100)", text)


def written_steps(text: str) -> list[Step]:
  """Every arithmetic step of `text` that can be recomputed, in order."""
  steps = []
  for match in _STEP.finditer(text):
    expression = match["expression"].strip()
    python = _as_python(expression)
    if "remainder" in text[match.end() : match.end() + 40]:
      python = re.sub(r"(?<!/)/(?!/)", "//", python)
    try:
      value = answers.evaluate_arithmetic(python)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError):
      continue  # unbalanced parentheses, say: not a step we can check
    steps.append(Step(expression, match["stated"], value, match.start("stated")))
  return steps


def number_text(value: float) -> str:
  """`value` as an answer writes it: a whole number bare, else at most two decimals."""
  return answers.format_number(round(value, 2))


def corrected_prefix(text: str) -> str | None:
  """`text` up to its first wrong calculation, that step's result written right ("8 * 13 = $104"
  for "8 * 13 = $116. Then ..."): where the answer went wrong, set right, for the model to go
  on from. None where every step read is right."""
  wrong = next((s for s in written_steps(text) if not s.correct), None)
  if wrong is None:
    return None
  return text[: wrong.stated_at] + number_text(wrong.value)


def slips(text: str) -> tuple[int, int]:
  """(steps read, steps whose stated result is wrong) of one answer."""
  steps = written_steps(text)
  return len(steps), sum(not s.correct for s in steps)


def profile(graded: Iterable[tuple[str, bool]]) -> dict:
  """Over (answer text, whether its final answer is right) pairs: the share of answers with a
  wrong arithmetic step, the accuracy of the answers without one, and the steps read per answer."""
  n = steps = with_slip = right_without_slip = 0
  for text, correct in graded:
    read, wrong = slips(text)
    n += 1
    steps += read
    with_slip += wrong > 0
    right_without_slip += bool(correct) and not wrong
  return {
    "answers": n,
    "answers_with_slip": with_slip,
    "slip_share": with_slip / max(1, n),
    "accuracy_without_slip": right_without_slip / max(1, n - with_slip),
    "steps_per_answer": steps / max(1, n),
  }
