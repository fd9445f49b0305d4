"""Row formats → `Example`: one converter per format that a local file or a hub dataset uses.

Each converter takes the task name, a `Row` (typed field access that names file and line on
error) and the row's default id.
"""

from __future__ import annotations

import re

from srit_jax.tasks.answers import boxed_contents, format_number, parse_number
from srit_jax.tasks.example import CHOICE, LATEX, LETTERS, NUMBER, Example
from srit_jax.tasks.rows import Row

CALCULATOR_MARK = re.compile(r"<<[^<>]*>>")


def _number(row: Row, field: str, value) -> str:
  number = parse_number(str(value)) if not isinstance(value, int | float) else float(value)
  if number is None:
    row.fail(field, f"is not a number: {value!r}")
  return format_number(number)


def _letter(row: Row, field: str, index: int, count: int) -> str:
  if not 0 <= index < count:
    row.fail(field, f"points at option {index + 1} of {count}")
  return LETTERS[index]


# --- numeric word problems ---------------------------------------------------------------


def gsm8k(task, row: Row, default_id) -> Example:
  """openai/grade-school-math: `question`, `answer` = worked solution ending "#### N"."""
  answer = row.get("answer")
  if "####" not in answer:
    row.fail("answer", "has no '#### N' final answer")
  solution, final = answer.rsplit("####", 1)
  gold = _number(row, "answer", final.strip())
  solution = CALCULATOR_MARK.sub("", solution).strip()
  return Example(
    task, str(default_id), row.get("question"), gold, NUMBER, solution=f"{solution}\nThe answer is {gold}."
  )


def multiarith(task, row: Row, default_id) -> Example:
  """zero_shot_cot's MultiArith.json: `sQuestion`, `lSolutions` [number]."""
  solutions = row.get("lSolutions", list)
  if len(solutions) != 1:
    row.fail("lSolutions", f"must hold one number, holds {len(solutions)}")
  return Example(
    task,
    str(row.row.get("iIndex", default_id)),
    row.get("sQuestion").strip(),
    _number(row, "lSolutions", solutions[0]),
    NUMBER,
  )


def multiarith_hub(task, row: Row, default_id) -> Example:
  """ChilleD/MultiArith: `question`, `final_ans`."""
  return Example(
    task,
    str(default_id),
    row.get("question").strip(),
    _number(row, "final_ans", row.get("final_ans", (str, int, float))),
    NUMBER,
  )


def svamp(task, row: Row, default_id) -> Example:
  """SVAMP.json (and ChilleD/SVAMP): `Body` + " " + `Question`, `Answer`."""
  question = f"{row.get('Body').strip()} {row.get('Question').strip()}"
  identifier = row.get("ID", optional=True) or default_id
  return Example(task, str(identifier), question, _number(row, "Answer", row.get("Answer", (int, float, str))), NUMBER)


def adapters_number(task, row: Row, default_id) -> Example:
  """LLM-Adapters math files (AddSub, SingleEq): `instruction` = question, `answer` = number."""
  return Example(
    task,
    str(default_id),
    row.get("instruction").strip(),
    _number(row, "answer", row.get("answer", (str, int, float))),
    NUMBER,
  )


def mawps(task, row: Row, default_id) -> Example:
  """MAWPS trainset.json: `original_text`, `ans`."""
  return Example(
    task,
    str(row.row.get("id", default_id)),
    row.get("original_text").strip(),
    _number(row, "ans", row.get("ans", (int, float, str))),
    NUMBER,
  )


# --- multiple choice -----------------------------------------------------------------------


def _options(row: Row, field: str, texts: list, labels: list | None = None) -> tuple[str, ...]:
  if not texts or not all(isinstance(t, str) for t in texts):
    row.fail(field, "must be a non-empty list of option texts")
  if labels is not None and len(labels) != len(texts):
    row.fail(field, "has as many labels as texts")
  return tuple(t.strip() for t in texts)


def _letter_of_label(row: Row, field: str, key: str, labels: list) -> str:
  if key not in labels:
    row.fail(field, f"{key!r} is not one of the labels {labels}")
  return LETTERS[labels.index(key)]


def aqua(task, row: Row, default_id) -> Example:
  """AQuA (zero_shot_cot test.jsonl, deepmind/aqua_rat): `question`, `options` ["A)…"], `correct`."""
  options = row.get("options", list)
  texts = [re.sub(r"^\s*[A-E]\s*\)\s*", "", str(o)) for o in options]
  choices = _options(row, "options", texts)
  correct = row.get("correct").strip()
  gold = _letter_of_label(row, "correct", correct, list(LETTERS[: len(choices)]))
  return Example(
    task, str(default_id), row.get("question"), gold, CHOICE, choices, solution=row.row.get("rationale") or ""
  )


def csqa(task, row: Row, default_id) -> Example:
  """CommonsenseQA files: `question.stem`, `question.choices[{label,text}]`, `answerKey`."""
  choices = row.get("question.choices", list)
  labels = [c.get("label") if isinstance(c, dict) else None for c in choices]
  texts = _options(row, "question.choices", [c.get("text") if isinstance(c, dict) else None for c in choices], labels)
  gold = _letter_of_label(row, "answerKey", row.get("answerKey"), labels)
  return Example(task, str(row.row.get("id", default_id)), row.get("question.stem"), gold, CHOICE, texts)


def labelled_choices(task, row: Row, default_id, question_field="question") -> Example:
  """Hub format {question, choices: {label: [...], text: [...]}, answerKey} (tau/commonsense_qa, ai2_arc)."""
  labels, texts = row.get("choices.label", list), row.get("choices.text", list)
  choices = _options(row, "choices.text", texts, labels)
  gold = _letter_of_label(row, "answerKey", row.get("answerKey"), labels)
  return Example(task, str(row.row.get("id", default_id)), row.get(question_field), gold, CHOICE, choices)


def openbookqa_hub(task, row: Row, default_id) -> Example:
  return labelled_choices(task, row, default_id, question_field="question_stem")


def piqa_hub(task, row: Row, default_id) -> Example:
  """ybisk/piqa (and TFDS piqa): `goal`, `sol1`, `sol2`, `label` 0/1."""
  choices = (row.get("sol1").strip(), row.get("sol2").strip())
  return Example(
    task, str(default_id), row.get("goal"), _letter(row, "label", int(row.get("label", (int, str))), 2), CHOICE, choices
  )


def siqa_hub(task, row: Row, default_id) -> Example:
  """allenai/social_i_qa (and TFDS): `context`, `question`, `answerA..C`, `label` "1".."3"."""
  choices = tuple(row.get(f"answer{x}").strip() for x in "ABC")
  question = f"{row.get('context').strip()} {row.get('question').strip()}"
  return Example(
    task, str(default_id), question, _letter(row, "label", int(row.get("label", (int, str))) - 1, 3), CHOICE, choices
  )


def mmlu_hub(task, row: Row, default_id) -> Example:
  """cais/mmlu: `question`, `choices` [4], `answer` index, `subject`."""
  choices = _options(row, "choices", row.get("choices", list))
  identifier = f"{row.row.get('subject', 'mmlu')}/{default_id}"
  return Example(
    task, identifier, row.get("question"), _letter(row, "answer", row.get("answer", int), len(choices)), CHOICE, choices
  )


def mmlu_csv(task, row: Row, default_id) -> Example:
  """MMLU CSV with header question,choice0..choice3,answer (answer = index)."""
  choices = _options(row, "choice0", [row.get(f"choice{i}") for i in range(4)])
  answer = row.get("answer")
  if not answer.strip().isdigit():
    row.fail("answer", f"must be an option index 0-3, got {answer!r}")
  return Example(task, str(default_id), row.get("question"), _letter(row, "answer", int(answer), 4), CHOICE, choices)


_OPTION_SPLIT = re.compile(r"(?:^|\s)(?:Answer|Solution|Option)(\d+):\s*")


def adapters_choice(task, row: Row, default_id) -> Example:
  """LLM-Adapters commonsense files: options inside `instruction`, `answer` = "answer2"/"solution1"."""
  instruction = row.get("instruction")
  body = instruction.split("\n\nAnswer format:")[0]
  body = re.sub(r"^Please choose the correct (?:answer|solution) to the question:\s*", "", body)
  parts = _OPTION_SPLIT.split(body)
  question, numbered = parts[0].strip(), parts[1:]
  numbers, texts = numbered[0::2], [t.strip() for t in numbered[1::2]]
  if len(texts) < 2 or numbers != [str(i) for i in range(1, len(texts) + 1)]:
    row.fail("instruction", "does not list its options as Answer1: … Answer2: … (or Solution1: …)")
  answer = row.get("answer").strip().lower()
  match = re.fullmatch(r"(?:answer|solution|option)(\d+)", answer)
  if not match:
    row.fail("answer", f"must be like 'answer2' or 'solution1', got {answer!r}")
  return Example(
    task, str(default_id), question, _letter(row, "answer", int(match.group(1)) - 1, len(texts)), CHOICE, tuple(texts)
  )


# --- MATH ----------------------------------------------------------------------------------


def math_solution(task, row: Row, default_id, question_field="question", solution_field="answer") -> Example:
  """MATH: the gold answer is the last `\\boxed{}` of the worked solution."""
  solution = row.get(solution_field)
  boxed = boxed_contents(solution)
  given = row.row.get("answer") if solution_field != "answer" else None
  if not boxed and not isinstance(given, str):
    row.fail(solution_field, "has no \\boxed{} final answer")
  gold = given if isinstance(given, str) and given.strip() else boxed[-1]
  solution = re.sub(r"The answer is:.*\Z", "", solution, flags=re.DOTALL).strip()
  identifier = row.row.get("unique_id", default_id)
  return Example(task, str(identifier), row.get(question_field), gold.strip(), LATEX, solution=solution)


def math_hub(task, row: Row, default_id) -> Example:
  return math_solution(task, row, default_id, question_field="problem", solution_field="solution")


def openbookqa_tfds(task, row: Row, default_id) -> Example:
  """TFDS openbookqa: `question.stem`, `question.choice_A..D`, `answerKey`."""
  choices = tuple(row.get(f"question.choice_{x}").strip() for x in "ABCD")
  gold = row.get("answerKey").strip()
  if gold not in "ABCD":
    row.fail("answerKey", f"must be A-D, got {gold!r}")
  return Example(task, str(row.row.get("id", default_id)), row.get("question.stem"), gold, CHOICE, choices)
