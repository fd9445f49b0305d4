"""Task loaders on the real files (row counts of ../shared/data/MANIFEST.md), the hub path on
local copies in the hub's formats, malformed rows, prompts, answer extraction and scoring."""

import json

import pytest
from conftest import SHARED_DATA

from srit_jax.tasks import DataError, answers, load_examples, prompts, registry, synthetic
from srit_jax.tasks.example import CHOICE, LATEX, NUMBER, Example

BENCHMARKS = SHARED_DATA / "benchmarks"

# (task, split, rows in MANIFEST.md, answer type, options per question)
LOCAL_FILES = [
  ("gsm8k", "train", 7473, NUMBER, 0),
  ("gsm8k", "test", 1319, NUMBER, 0),
  ("multiarith", "test", 600, NUMBER, 0),
  ("svamp", "test", 1000, NUMBER, 0),
  ("aqua", "test", 254, CHOICE, 5),
  ("addsub", "test", 79, NUMBER, 0),
  ("singleeq", "test", 102, NUMBER, 0),
  ("mawps", "train", 1898, NUMBER, 0),
  ("csqa", "train", 9741, CHOICE, 5),
  ("csqa", "validation", 1221, CHOICE, 5),
  ("obqa", "train", 4957, CHOICE, 4),
  ("obqa", "test", 500, CHOICE, 4),
  ("piqa", "validation", 1838, CHOICE, 2),
  ("siqa", "validation", 1954, CHOICE, 3),
  ("arc_challenge", "test", 1172, CHOICE, None),  # 3 to 5 options
  ("mmlu", "dev", 285, CHOICE, 4),
  ("mmlu", "test", 14042, CHOICE, 4),
  ("math", "test", 500, LATEX, 0),
]


@pytest.mark.parametrize("task,split,rows,answer_type,options", LOCAL_FILES)
def test_local_files_load_whole(task, split, rows, answer_type, options):
  examples = load_examples(task, split, data_dir=BENCHMARKS)
  assert len(examples) == rows
  assert all(e.answer_type == answer_type and e.question.strip() and e.gold for e in examples)
  if options is not None:
    assert all(len(e.choices) == options for e in examples)
  assert len({e.id for e in examples}) == rows  # ids are unique
  assert registry.split_size(task, split, data_dir=BENCHMARKS) == rows  # what a plan counts
  if answer_type == NUMBER:
    assert all(answers.parse_number(e.gold) is not None for e in examples)


# The local files that hold another cut of the data than the hub dataset the registry names:
# MultiArith and SVAMP whole here, split into train and test on the hub (ChilleD).
OTHER_CUTS = {"multiarith", "svamp"}


@pytest.mark.parametrize(
  "task,split,rows", [(t, s, r) for t, s, r, *_ in LOCAL_FILES if t not in OTHER_CUTS and registry.TASKS[t].hub]
)
def test_published_hub_sizes_agree_with_the_local_copies(task, split, rows):
  """The sizes a plan counts whole hub splits by (no hub here) are those of the same data offline."""
  assert registry.split_size(task, split, source="hub") == rows


def test_split_sizes_of_generated_tasks_and_unknown_ones():
  assert registry.split_size("wordmath", "train") == len(load_examples("wordmath", "train"))
  assert registry.split_size("arith") == len(load_examples("arith"))
  assert registry.split_size("addsub", source="hub") is None  # local files only
  assert registry.split_size("gsm8k", "train", source="local", data_dir="/nonexistent") is None


def test_known_rows_parse_to_the_right_fields():
  gsm8k = load_examples("gsm8k", "test", data_dir=BENCHMARKS, limit=1)[0]
  assert gsm8k.gold == "18" and gsm8k.question.startswith("Janet")
  assert "<<" not in gsm8k.solution and gsm8k.solution.endswith("The answer is 18.")
  svamp = load_examples("svamp", "test", data_dir=BENCHMARKS, limit=1)[0]
  assert svamp.question == (
    "Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack "
    "How much do you have to pay to buy each pack?"
  )
  assert svamp.gold == "51"
  obqa = load_examples("obqa", "test", data_dir=BENCHMARKS, limit=1)[0]
  assert obqa.choices[1] == "quit eating lunch out" and obqa.gold == "B"
  assert obqa.question.endswith("the best way to save money is to")
  piqa = load_examples("piqa", "validation", data_dir=BENCHMARKS, limit=1)[0]
  assert len(piqa.choices) == 2 and piqa.question == "How do I ready a guinea pig cage for it's new occupants?"
  math = load_examples("math", "test", data_dir=BENCHMARKS, limit=1)[0]
  assert math.gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
  assert load_examples("aqua", "test", data_dir=BENCHMARKS, limit=1)[0].choices[0] == "5(√3 + 1)"


@pytest.mark.parametrize(
  "content,expected",
  [
    (
      '[\n  {"question": "q", "answer": "a #### 3"},\n  {"question": "q2"}\n]\n',
      r"bad\.json:3: field 'answer' is missing",
    ),
    (
      '[\n  {"question": "q", "answer": "a #### 3"},\n  {"question": 7, "answer": "#### 2"}\n]',
      r":3: field 'question' must be str",
    ),
    (
      '[\n  {"question": "q", "answer": "a #### 3"},\n  {"question": "q", "answer": "no final"}\n]',
      r":3: field 'answer' has no '#### N'",
    ),
    (
      '[\n  {"question": "q", "answer": "#### 3"}\n  {"question": "q", "answer": "#### 2"}\n]',
      r":3: expected ',' or ']'",
    ),
    (
      '{"question": "q", "answer": "#### 3"}\n{"question": "q", "answer": "#### x"}\n',
      r":2: field 'answer' is not a number",
    ),
    ('{"question": "q", "answer": "#### 3"}\n{"question": "q", "answer":\n', r"bad\.json:2: not valid JSON"),
    ('{"question": "q", "answer": "#### 3"}\n[1, 2]\n', r":2: expected a JSON object, got list"),
  ],
)
def test_malformed_rows_name_file_line_and_field(tmp_path, content, expected):
  (tmp_path / "gsm8k").mkdir()
  path = tmp_path / "gsm8k" / "bad.json"
  path.write_text(content)
  from srit_jax.tasks import formats, registry

  task = registry.Task("gsm8k", NUMBER, "math", "test", None, local={"test": ("gsm8k/bad.json", formats.gsm8k)})
  with pytest.raises(DataError, match=expected):
    registry._load_local(task, "test", tmp_path)


def test_malformed_choice_rows(tmp_path):
  (tmp_path / "obqa").mkdir()
  rows = [
    {
      "instruction": "Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b",
      "answer": "answer3",
    }
  ]
  (tmp_path / "obqa" / "test.json").write_text(json.dumps(rows, indent=1))
  with pytest.raises(DataError, match=r"test\.json:2: field 'answer' points at option 3 of 2"):
    load_examples("obqa", "test", data_dir=tmp_path)
  (tmp_path / "mmlu" / "test").mkdir(parents=True)
  (tmp_path / "mmlu" / "test" / "x_test.csv").write_text(
    "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,1\nq,a,b,c,d,B\n"
  )
  with pytest.raises(DataError, match=r"x_test\.csv:3: field 'answer' must be an option index"):
    load_examples("mmlu", "test", data_dir=tmp_path)
  with pytest.raises(DataError, match="not found"):
    load_examples("csqa", "validation", data_dir=tmp_path)


def _write_jsonl(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_hub_loaders_read_the_hub_formats(tmp_path, monkeypatch):
  """The hub path through `datasets`, on local copies laid out as the hub datasets are."""
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
  csqa_row = {
    "id": "x1",
    "question": "Where do fish live?",
    "question_concept": "fish",
    "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["tree", "sea", "sky", "desk", "car"]},
    "answerKey": "B",
  }
  _write_jsonl(tmp_path / "csqa" / "validation.jsonl", [csqa_row])
  (example,) = load_examples("csqa", "validation", source="hub", hub_path=str(tmp_path / "csqa"))
  assert example == Example("csqa", "x1", "Where do fish live?", "B", CHOICE, ("tree", "sea", "sky", "desk", "car"))

  arc_row = {
    "id": "a",
    "question": "Q?",
    "choices": {"label": ["1", "2", "3"], "text": ["x", "y", "z"]},
    "answerKey": "3",
  }
  _write_jsonl(tmp_path / "arc" / "test.jsonl", [arc_row])
  (arc,) = load_examples("arc_challenge", "test", source="hub", hub_path=str(tmp_path / "arc"))
  assert arc.gold == "C" and arc.choices == ("x", "y", "z")

  siqa_row = {
    "context": "Tracy left.",
    "question": "Why?",
    "answerA": "a",
    "answerB": "b",
    "answerC": "c",
    "label": "2",
  }
  _write_jsonl(tmp_path / "siqa" / "validation.jsonl", [siqa_row])
  (siqa,) = load_examples("siqa", "validation", source="hub", hub_path=str(tmp_path / "siqa"))
  assert siqa.question == "Tracy left. Why?" and siqa.gold == "B"

  mmlu_row = {"question": "2+2?", "subject": "math", "choices": ["1", "2", "3", "4"], "answer": 3}
  _write_jsonl(tmp_path / "mmlu" / "test.jsonl", [mmlu_row])
  (mmlu,) = load_examples("mmlu", "test", source="hub", hub_path=str(tmp_path / "mmlu"))
  assert mmlu.gold == "D" and mmlu.id == "math/0"

  gsm_row = {"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}
  _write_jsonl(tmp_path / "gsm" / "train.jsonl", [gsm_row])
  (gsm,) = load_examples("gsm8k", "train", source="hub", hub_path=str(tmp_path / "gsm"))
  assert gsm.gold == "2" and gsm.solution == "1+1=2\nThe answer is 2."

  piqa_row = {"goal": "Open a jar", "sol1": "twist", "sol2": "kick", "label": 0}
  _write_jsonl(tmp_path / "piqa" / "validation.jsonl", [piqa_row])
  assert load_examples("piqa", "validation", source="hub", hub_path=str(tmp_path / "piqa"))[0].gold == "A"

  bad = dict(csqa_row, answerKey="F")
  _write_jsonl(tmp_path / "bad" / "validation.jsonl", [csqa_row, bad])
  with pytest.raises(DataError, match=r"row 1: field 'answerKey' 'F' is not one of the labels"):
    load_examples("csqa", "validation", source="hub", hub_path=str(tmp_path / "bad"))
  with pytest.raises(ValueError, match="no Hugging Face hub dataset"):
    load_examples("addsub", "test", source="hub")


def test_synthetic_tasks_are_seeded_correct_and_held_out():
  train, test = synthetic.generate("arith", "train"), synthetic.generate("arith", "test")
  assert synthetic.generate("arith", "test") == test  # same arguments, same problems
  assert synthetic.generate("arith", "test", seed=1) != test
  assert not {e.question for e in train} & {e.question for e in test}
  assert len({e.question for e in train}) == len(train) == 1000
  for example in train[:200] + synthetic.generate("arith_hard", "test")[:200]:
    # The worked solution's arithmetic is right and ends at the gold answer.
    for left, right in __import__("re").findall(r"(\d+ [-+*/] \d+) = (\d+)", example.solution):
      assert answers.evaluate_arithmetic(left) == float(right), example.solution
    assert answers.is_correct(example, answers.extract_answer(example, example.solution))
  steps = lambda examples: sum(e.question.count("Then") for e in examples) / len(examples)
  assert steps(synthetic.generate("arith_hard", "test")) > steps(test) + 1.5


def test_prompts_cot_and_direct():
  example = Example("csqa", "1", "Where do fish live?", "B", CHOICE, ("tree", "sea"))
  cot, direct = prompts.prompt(example, prompts.COT), prompts.prompt(example, prompts.DIRECT)
  assert cot.endswith("Let's think step by step.") and "Let's think" not in direct
  assert "(A) tree\n(B) sea" in cot and "options A, B." in cot
  assert "(B) sea" in direct and "no explanation" in direct
  with pytest.raises(ValueError, match="prompt style"):
    prompts.prompt(example, "fewshot")


@pytest.mark.parametrize(
  "text,expected",
  [
    ("She has 3 + 4 = 7 apples. The answer is 7.", "7"),
    ("The answer is 1,234 dollars.", "1234"),
    ("So it costs $5.50 in total.\nThe answer is $5.50", "5.50"),
    ("Therefore, the answer (arabic numerals) is 26 + 36 - 48 = 14.", "26"),  # first number after the phrase
    ("The answer is 3/4 of a cup.", "3/4"),
    ("It drops 5 degrees to -3. The answer is -3.", "-3"),
    ("Each gets 10 / 4 = 2.5 cookies", "2.5"),  # no answer phrase: the last number
    ("#### 72", "72"),
    ("First 12, then \\boxed{42}. Done 7", "42"),
    ("The answer is eleven.", None),  # an answer phrase without a numeral: no answer
    ("No numbers here", None),
  ],
)
def test_extract_number(text, expected):
  assert answers.extract_number(text) == expected


def test_number_scoring():
  example = Example("t", "1", "q", "0.75", NUMBER)
  for predicted in ("3/4", "0.75", ".75", "0.750", "75%"):
    assert answers.is_correct(example, predicted) == (predicted != "75%")
  assert answers.is_correct(Example("t", "1", "q", "1234", NUMBER), "1,234")
  assert not answers.is_correct(Example("t", "1", "q", "1234", NUMBER), None)
  assert answers.format_number(42.0) == "42" and answers.format_number(0.1 + 0.2) == "0.3"
  assert answers.evaluate_arithmetic("( 84.0 / 2.0 )") == 42.0
  with pytest.raises(ValueError, match="not plain arithmetic"):
    answers.evaluate_arithmetic("__import__('os')")


@pytest.mark.parametrize(
  "text,expected",
  [
    ("So the answer is (D) math problem.", "D"),
    ("So the answer is (d) math problem.", "D"),
    ("Therefore, among A through E, the answer is B, melted.", "B"),
    ('The answer is "sea".', "B"),  # the option's text
    ("the correct answer is answer3", "C"),  # LLM-Adapters' format
    ("A fish needs water, so (B) is right.", "B"),  # no phrase: the last parenthesised letter
    ("A fish lives in the sea.", "B"),  # no phrase, no letter: an option's text
    ("The answer is (F).", None),  # not an option
  ],
)
def test_extract_choice(text, expected):
  choices = ("tree", "sea", "sky", "desk")
  assert answers.extract_choice(text, choices) == expected


def test_latex_extraction_and_normalisation():
  assert answers.extract_latex("so $x = \\boxed{\\frac{1}{\\sqrt{2}}}$.") == "\\frac{1}{\\sqrt{2}}"
  assert (
    answers.extract_latex("The answer is: \\left( 3, \\frac{\\pi}{2} \\right)") == "\\left( 3, \\frac{\\pi}{2} \\right)"
  )
  example = Example("math", "1", "q", "\\left( 3, \\frac{\\pi}{2} \\right)", LATEX)
  assert answers.is_correct(example, "(3,\\frac{\\pi}{2})")
  assert answers.is_correct(Example("math", "1", "q", "\\frac{1}{2}", LATEX), "\\dfrac12")
  assert answers.is_correct(Example("math", "1", "q", "0.5", LATEX), "\\frac{1}{2}")
  assert answers.is_correct(Example("math", "1", "q", "90^\\circ", LATEX), "90")
  assert not answers.is_correct(example, "(3, \\pi)")


def test_math500_gold_answers_match_their_solutions():
  """Each MATH-500 solution's last \\boxed{} is its gold answer (the file also states it)."""
  for example in load_examples("math", "test", data_dir=BENCHMARKS):
    assert answers.extract_latex(example.solution) == example.gold


def test_the_majority_vote_counts_equal_answers_together_and_ignores_no_answer():
  number = Example(task="t", id="1", question="q", gold="12", answer_type=NUMBER)
  assert answers.majority_answer(number, ["13", "12", "$12.0", None, None, "13.000"]) == "13"  # 2 to 2: the first
  assert answers.majority_answer(number, ["13", "12", "12.0", None, None, "1,2"]) == "12"
  assert answers.majority_answer(number, ["7", "8", "8.0", "7"]) == "7"  # a tie: the answer given first
  assert answers.majority_answer(number, [None, None]) is None
  assert answers.vote_key(number, "3/4") == answers.vote_key(number, "0.75") == "0.75"
  choice = Example(task="t", id="2", question="q", gold="B", answer_type=CHOICE, choices=("x", "y", "z"))
  assert answers.majority_answer(choice, ["A", "B", None, "B"]) == "B"
  latex = Example(task="t", id="3", question="q", gold="\\frac{1}{2}", answer_type=LATEX)
  assert answers.majority_answer(latex, ["\\dfrac{1}{2}", "x+1", "0.5", "x + 1"]) == "\\dfrac{1}{2}"
  assert answers.is_correct(latex, answers.majority_answer(latex, ["0.5", "x+1", "\\frac12"]))
