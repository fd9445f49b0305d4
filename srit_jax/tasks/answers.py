"""Final answers out of free text, normalised, and scored against gold.

One rule for every source, teacher or student: look at the text after the *last* answer
phrase ("the answer is", "answer:", "####", a line starting "A:") and take the first answer
there; with no answer phrase, take the last answer in the whole text (a number, a
parenthesised option letter, or a `\\boxed{}`). The phrase "Therefore, the answer (arabic
numerals) is" of zero-shot-CoT prompting and "So the answer is (d) text" of few-shot CoT
both fall under it. When the text after the last answer phrase holds no answer ("the answer
is eleven"), there is none: the benchmarks ask for numerals and letters.
"""

from __future__ import annotations

import ast
import math
import operator
import re

from srit_jax.tasks.example import CHOICE, LATEX, LETTERS, NUMBER, Example

ANSWER_PHRASE = re.compile(
  r"answer(?:\s*\(arabic numerals\))?\s*(?:is\s*:?|:)|####|^\s*A:", re.IGNORECASE | re.MULTILINE
)
# A number: optional sign, digits, optional decimals, optional "/denominator" (no spaces).
NUMBER_PATTERN = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?")
THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def _after_last_answer_phrase(text: str) -> str | None:
  matches = list(ANSWER_PHRASE.finditer(text))
  return text[matches[-1].end() :] if matches else None


def boxed_contents(text: str) -> list[str]:
  """Contents of every `\\boxed{...}` (and `\\fbox{...}`), braces balanced."""
  found = []
  for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
    depth, start = 1, match.end()
    for i in range(start, len(text)):
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      if depth == 0:
        found.append(text[start:i])
        break
  return found


# --- numbers -----------------------------------------------------------------------------


def parse_number(text: str) -> float | None:
  """A number from "1,234", "$5.50", "3/4", "-2", "75%"; None when it is not one."""
  text = THOUSANDS_COMMA.sub("", text.strip()).replace("$", "").rstrip(".%").strip()
  text = re.sub(r"^\\?frac\{(-?\d+)\}\{(\d+)\}$", r"\1/\2", text.replace("\\dfrac", "\\frac"))
  try:
    if "/" in text:
      numerator, denominator = text.split("/")
      return float(numerator) / float(denominator)
    return float(text)
  except (ValueError, ZeroDivisionError):
    return None


def format_number(value: float) -> str:
  """Gold numbers as strings: integers without ".0", others with up to 10 decimals."""
  if math.isclose(value, round(value), abs_tol=1e-9):
    return str(round(value))
  return f"{value:.10f}".rstrip("0")


def extract_number(text: str) -> str | None:
  boxed = boxed_contents(text)
  if boxed:
    text = boxed[-1]
  text = THOUSANDS_COMMA.sub("", text)
  segment = _after_last_answer_phrase(text)
  if segment is not None:
    found = NUMBER_PATTERN.findall(segment)
    return found[0] if found else None
  found = NUMBER_PATTERN.findall(text)
  return found[-1] if found else None


def numbers_equal(predicted: str | None, gold: str) -> bool:
  a, b = parse_number(predicted) if predicted is not None else None, parse_number(gold)
  return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


_OPERATORS = {
  ast.Add: operator.add,
  ast.Sub: operator.sub,
  ast.Mult: operator.mul,
  ast.Div: operator.truediv,
  ast.FloorDiv: operator.floordiv,
}


def evaluate_arithmetic(expression: str) -> float:
  """Value of an expression of numbers, + - * / // and parentheses (SVAMP's equations, a worked
  answer's calculations); nothing else."""

  def value(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
      return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
      return _OPERATORS[type(node.op)](value(node.left), value(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
      return -value(node.operand)
    raise ValueError(f"not plain arithmetic: {expression!r}")

  return value(ast.parse(expression.strip(), mode="eval").body)


# --- option letters ------------------------------------------------------------------------


def extract_choice(text: str, choices: tuple[str, ...]) -> str | None:
  """An option letter: "(C)", "C", "answer3"/"solution2", or an option's text after the answer phrase."""
  letters = LETTERS[: len(choices)]
  segment = _after_last_answer_phrase(text)
  if segment is None:
    found = [m.upper() for m in re.findall(r"\(([A-Ja-j])\)", text) if m.upper() in letters]
    return found[-1] if found else _choice_by_text(text, choices, last=True)
  numbered = re.search(r"\b(?:answer|solution|option)\s*(\d)\b", segment, re.IGNORECASE)
  candidates = [
    re.search(r"\(([A-Ja-j])\)", segment),
    re.search(r"(?<![\w'])([A-J])(?![\w'])", segment),
  ]
  hits = [(m.start(), m.group(1).upper()) for m in candidates if m and m.group(1).upper() in letters]
  if numbered and 1 <= int(numbered.group(1)) <= len(choices):
    hits.append((numbered.start(), letters[int(numbered.group(1)) - 1]))
  if hits:
    return min(hits)[1]
  return _choice_by_text(segment, choices, last=False)


def _choice_by_text(text: str, choices: tuple[str, ...], last: bool) -> str | None:
  lowered = text.lower()
  hits = []
  for letter, choice in zip(LETTERS, choices):
    choice = choice.strip().lower().rstrip(".")
    if not choice:
      continue
    for m in re.finditer(r"(?<!\w)" + re.escape(choice) + r"(?!\w)", lowered):
      hits.append(((-m.start() if last else m.start()), -len(choice), letter))
  return min(hits)[2] if hits else None


# --- LaTeX ---------------------------------------------------------------------------------


def extract_latex(text: str) -> str | None:
  boxed = boxed_contents(text)
  if boxed:
    return boxed[-1]
  segment = _after_last_answer_phrase(text)
  if segment is None:
    return None
  line = segment.strip().split("\n")[0].strip()
  return line.removeprefix("$").removesuffix(".").removesuffix("$").strip() or None


def normalize_latex(text: str) -> str:
  text = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", text)
  for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\ ", "")):
    text = text.replace(old, new)
  text = text.replace("dfrac", "frac").replace("tfrac", "frac").replace("^\\circ", "").replace("^{\\circ}", "")
  text = text.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
  text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
  return re.sub(r"\s+", "", text).rstrip(".")


def latex_equal(predicted: str | None, gold: str) -> bool:
  if predicted is None:
    return False
  a, b = normalize_latex(predicted), normalize_latex(gold)
  if a == b:
    return True
  x, y = parse_number(a), parse_number(b)
  return x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9)


# --- dispatch ------------------------------------------------------------------------------


def extract_answer(example: Example, text: str) -> str | None:
  if example.answer_type == NUMBER:
    return extract_number(text)
  if example.answer_type == CHOICE:
    return extract_choice(text, example.choices)
  return extract_latex(text)


def is_correct(example: Example, predicted: str | None) -> bool:
  if example.answer_type == NUMBER:
    return numbers_equal(predicted, example.gold)
  if example.answer_type == CHOICE:
    return predicted == example.gold
  assert example.answer_type == LATEX
  return latex_equal(predicted, example.gold)


def vote_key(example: Example, predicted: str | None) -> str | None:
  """The form in which equal answers vote together in a majority vote ("12", "12.0" and "$12"
  as one number; LaTeX normalised); None for no answer, which does not vote."""
  if predicted is None:
    return None
  if example.answer_type == NUMBER:
    value = parse_number(predicted)
    return None if value is None else format_number(round(value, 6))
  if example.answer_type == CHOICE:
    return predicted
  normalized = normalize_latex(predicted)
  value = parse_number(normalized)
  return normalized if value is None else format_number(round(value, 6))


def majority_answer(example: Example, predictions: list[str | None]) -> str | None:
  """Self-consistency's answer: the most frequent of `predictions` by `vote_key`, a tie going to
  the answer given first; None when no prediction holds an answer."""
  counts: dict[str, int] = {}
  first: dict[str, str] = {}
  for predicted in predictions:
    key = vote_key(example, predicted)
    if key is not None:
      counts[key] = counts.get(key, 0) + 1
      first.setdefault(key, predicted)
  if not counts:
    return None
  return first[max(counts, key=counts.get)]  # max keeps the first of equal counts: the earliest given
