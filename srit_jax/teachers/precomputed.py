"""Readers of precomputed teacher outputs in their publishers' formats (../shared/data/teachers):

- `palm_csqa`, `palm_svamp`: PaLM 540B few-shot CoT (distilling-step-by-step), rationales in
  chunks of 1000 in question order; each completion runs on into an invented next question,
  cut at the first "\\n\\nQ:".
- `davinci_zero_shot_cot`: text-davinci-002 zero-shot-CoT logs (kojima-takeshi188/zero_shot_cot):
  blocks of `Q:`, `A:`, `pred_mode`, `GT`.
- `gpt3_gsm8k`: GPT-3 (6B/175B, fine-tuned, with or without verifier) GSM8K test solutions.
- `chatgpt_math`: ChatGPT math rationales as LLM-Adapters distributes them.

A precomputed teacher brings its own questions (`examples()`); `rationales` finds an example's
outputs by id, or by its question text when ids differ.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Sequence

from srit_jax import io
from srit_jax.tasks.answers import evaluate_arithmetic, format_number
from srit_jax.tasks.example import CHOICE, LETTERS, NUMBER, Example
from srit_jax.tasks.registry import get_task
from srit_jax.tasks.rows import DataError, Row, read_rows
from srit_jax.teachers.base import Teacher

READERS = ("palm_csqa", "palm_svamp", "davinci_zero_shot_cot", "gpt3_gsm8k", "chatgpt_math")


def question_key(text: str) -> str:
  return re.sub(r"\s+", " ", text).strip().lower()


@dataclasses.dataclass(frozen=True)
class TeacherOutput:
  example: Example
  texts: tuple[str, ...]
  recorded_prediction: str | None = None  # what the publisher extracted, where recorded
  recorded_gold: str | None = None  # the gold label as the publisher recorded it


class PrecomputedTeacher(Teacher):
  def __init__(self, name: str, family: str, outputs: Sequence[TeacherOutput]):
    self.name, self.family, self.outputs = name, family, list(outputs)
    self._by_id = {(o.example.task, o.example.id): o for o in self.outputs}
    self._by_question = {question_key(o.example.question): o for o in self.outputs}

  def examples(self) -> list[Example]:
    return [o.example for o in self.outputs]

  def rationales(self, examples: Sequence[Example], num_samples: int) -> list[list[str]]:
    found = []
    for e in examples:
      output = self._by_id.get((e.task, e.id)) or self._by_question.get(question_key(e.question))
      found.append(list(output.texts[:num_samples]) if output else [])
    return found


def read_teacher(
  reader: str, path: str | pathlib.Path, *, split: str = "train", variant: str = "175b_verification"
) -> PrecomputedTeacher:
  """The precomputed teacher `reader` (one of READERS) from its file or folder."""
  path = io.as_path(path)
  if reader == "palm_csqa":
    return PrecomputedTeacher("palm-540b", "palm", read_palm_csqa(path, split))
  if reader == "palm_svamp":
    return PrecomputedTeacher("palm-540b", "palm", read_palm_svamp(path, split))
  if reader == "davinci_zero_shot_cot":
    return PrecomputedTeacher("text-davinci-002", "gpt", read_davinci_log(path))
  if reader == "gpt3_gsm8k":
    return PrecomputedTeacher(f"gpt3-{variant}", "gpt", read_gpt3_gsm8k(path, variant))
  if reader == "chatgpt_math":
    return PrecomputedTeacher("chatgpt", "gpt", read_chatgpt_math(path))
  raise ValueError(f"unknown teacher reader {reader!r}; readers: {', '.join(READERS)}")


# --- PaLM 540B (distilling step-by-step) ---------------------------------------------------


def cut_palm_completion(text: str) -> str:
  return text.split("\n\nQ:")[0].strip()


def _palm_rationales(folder: pathlib.Path, split: str) -> list[tuple[str, str]]:
  """(source, rationale) in question order from {split}_CoT_0.json, _1.json, ..."""
  chunks = sorted(folder.glob(f"{split}_CoT_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
  if not chunks:
    raise DataError(f"{folder}: no {split}_CoT_*.json rationale files")
  rationales = []
  for chunk in chunks:
    texts = json.loads(chunk.read_text(encoding="utf-8"))
    if not isinstance(texts, list):
      raise DataError(f"{chunk}: expected a JSON list of rationales")
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise DataError(f"{chunk}: item {i} is {type(text).__name__}, not a rationale string")
      rationales.append((f"{chunk}[{i}]", cut_palm_completion(text)))
  return rationales


def read_palm_csqa(folder: pathlib.Path, split: str = "train") -> list[TeacherOutput]:
  file = folder / f"cqa_{'train' if split == 'train' else 'test'}.json"
  rationales = _palm_rationales(folder, "train" if split == "train" else "test")
  rows = list(read_rows(file))
  if len(rows) != len(rationales):
    raise DataError(f"{file}: {len(rows)} questions but {len(rationales)} rationales in {folder}")
  outputs = []
  for (line, row), (_, text) in zip(rows, rationales):
    r = Row(row, f"{file}:{line}")
    choices = tuple(c.strip() for c in r.get("choices", list))
    answer = r.get("answer").strip()
    if answer not in choices:
      r.fail("answer", f"{answer!r} is not one of its choices")
    gold = LETTERS[choices.index(answer)]
    example = Example("csqa", r.get("id"), r.get("question"), gold, CHOICE, choices)
    # "(d) text" → "(D) text": the option letters of our prompts.
    text = re.sub(r"answer is \(([a-e])\)", lambda m: f"answer is ({m.group(1).upper()})", text)
    outputs.append(TeacherOutput(example, (text,)))
  return outputs


def evaluate_final_expression(rationale: str) -> str:
  """PaLM's SVAMP rationales end "The answer is (84 / 2)."; the number replaces the expression."""

  def number(match):
    try:
      return f"The answer is {format_number(evaluate_arithmetic(match.group(1)))}."
    except (ValueError, SyntaxError, ZeroDivisionError):
      return match.group(0)

  return re.sub(r"The answer is ([-\d\s.()+*/]+?)\.?\s*$", number, rationale)


def read_palm_svamp(folder: pathlib.Path, split: str = "train") -> list[TeacherOutput]:
  file = folder / f"svamp_{'train' if split == 'train' else 'test'}.json"
  rationales = _palm_rationales(folder, "train" if split == "train" else "test")
  rows = list(read_rows(file))
  if len(rows) != len(rationales):
    raise DataError(f"{file}: {len(rows)} questions but {len(rationales)} rationales in {folder}")
  outputs = []
  for index, ((line, row), (_, text)) in enumerate(zip(rows, rationales)):
    r = Row(row, f"{file}:{line}")
    try:
      gold = format_number(evaluate_arithmetic(r.get("label")))
    except (ValueError, SyntaxError, ZeroDivisionError):
      r.fail("label", f"is not an arithmetic expression: {row.get('label')!r}")
    example = Example("svamp", f"{split}-{index}", re.sub(r"\s*\n\s*", " ", r.get("input")).strip(), gold, NUMBER)
    outputs.append(TeacherOutput(example, (evaluate_final_expression(text),)))
  return outputs


# --- text-davinci-002 zero-shot CoT logs ---------------------------------------------------

_LOG_TASKS = {
  "multiarith": "multiarith",
  "gsm8k": "gsm8k",
  "svamp": "svamp",
  "aqua": "aqua",
  "commonsensqa": "csqa",
  "addsub": "addsub",
  "singleeq": "singleeq",
}
_LOG_BLOCK = re.compile(
  r"^Q: (?P<question>.*?)\nA: (?P<answer>.*?)\npred_before : .*?^pred_mode : (?P<pred>[^\n]*)\nGT : (?P<gt>[^\n]*)$",
  re.MULTILINE | re.DOTALL,
)
_INLINE_CHOICES = re.compile(r"\s*Answer Choices:\s*(.*)$", re.DOTALL)


def read_davinci_log(path: pathlib.Path) -> list[TeacherOutput]:
  """Examples, the model's answer text (CoT trigger removed) and the logged prediction."""
  dataset = path.name.split("_zero_shot")[0]
  if dataset not in _LOG_TASKS:
    raise DataError(f"{path}: dataset {dataset!r} is not one of {sorted(_LOG_TASKS)}")
  task = get_task(_LOG_TASKS[dataset])
  text = path.read_text(encoding="utf-8")
  outputs = []
  for index, block in enumerate(_LOG_BLOCK.finditer(text)):
    question, answer = block["question"].strip(), block["answer"]
    line = text.count("\n", 0, block.start()) + 1
    choices: tuple[str, ...] = ()
    if task.answer_type == CHOICE:
      found = _INLINE_CHOICES.search(question)
      if not found:
        raise DataError(f"{path}:{line}: question has no 'Answer Choices:' list")
      question = question[: found.start()].strip()
      choices = tuple(c.strip() for c in re.split(r"\([A-E]\)\s*", found.group(1))[1:])
    answer = answer.removeprefix("Let's think step by step.").strip()
    gold = block["gt"].strip()
    if task.answer_type == NUMBER:
      gold = format_number(float(gold.replace(",", "")))
    example = Example(task.name, str(index), question, gold, task.answer_type, choices)
    outputs.append(
      TeacherOutput(example, (answer,), recorded_prediction=block["pred"].strip(), recorded_gold=block["gt"].strip())
    )
  if not outputs:
    raise DataError(f"{path}: no Q:/A:/pred_mode/GT blocks found")
  return outputs


def logged_accuracy(path: pathlib.Path) -> float:
  """The accuracy (percent) the log records on its last line."""
  found = re.findall(r"^accuracy : ([\d.]+)$", path.read_text(encoding="utf-8"), re.MULTILINE)
  if not found:
    raise DataError(f"{path}: no 'accuracy :' line")
  return float(found[-1])


# --- GPT-3 GSM8K and ChatGPT math --------------------------------------------------------


def read_gpt3_gsm8k(path: pathlib.Path, variant: str = "175b_verification") -> list[TeacherOutput]:
  outputs = []
  for index, (line, row) in enumerate(read_rows(path)):
    r = Row(row, f"{path}:{line}")
    truth = r.get("ground_truth")
    final = re.findall(r"^A:\s*(.+)$", truth, re.MULTILINE)
    if not final:
      r.fail("ground_truth", "has no final 'A: N' line")
    gold = format_number(float(final[-1].replace(",", "")))
    solution = r.get(f"{variant}.solution")
    example = Example("gsm8k", str(index), r.get("question"), gold, NUMBER)
    outputs.append(TeacherOutput(example, (solution,)))
  return outputs


def read_chatgpt_math(path: pathlib.Path) -> list[TeacherOutput]:
  outputs = []
  for index, (line, row) in enumerate(read_rows(path)):
    r = Row(row, f"{path}:{line}")
    question, answer = r.get("instruction").strip(), r.get("answer").strip()
    found = _INLINE_CHOICES.search(question)
    if found and answer in LETTERS:
      choices = tuple(c.strip() for c in re.split(r"\([A-E]\)\s*", found.group(1))[1:])
      example = Example("chatgpt_math", str(index), question[: found.start()].strip(), answer, CHOICE, choices)
    else:
      try:
        gold = format_number(float(answer.replace(",", "")))
      except ValueError:
        r.fail("answer", f"is neither a number nor an option letter: {answer!r}")
      example = Example("chatgpt_math", str(index), question, gold, NUMBER)
    rationale = r.get("output", optional=True)
    if not rationale or not rationale.strip():
      continue  # a handful of items carry no rationale: nothing to learn from
    outputs.append(TeacherOutput(example, (rationale.strip(),)))
  return outputs
