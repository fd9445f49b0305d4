"""The built-in word-problem tasks: seeded, disjoint splits, held-out phrasings and kinds that no
training example uses, and answers that agree with an arithmetic check made without the text."""

import re

import pytest

from srit_jax.tasks import answers, load_examples, word_problem_kinds, word_problems

SPLITS = [("wordmath", "train"), ("wordmath", "test"), ("wordmath_ood", "test"), ("wordmath_hard", "test")]


def test_the_same_seed_gives_the_same_problems_and_another_seed_others():
  for task, split in SPLITS:
    first = word_problems.generate(task, split, size=50)
    assert first == word_problems.generate(task, split, size=50)
    assert [e.question for e in first] != [e.question for e in word_problems.generate(task, split, size=50, seed=1)]
  assert load_examples("wordmath", "train", limit=5) == word_problems.generate("wordmath", "train", size=5)


def test_splits_share_no_question():
  questions = {(t, s): {e.question for e in word_problems.generate(t, s)} for t, s in SPLITS}
  for size, (task, split) in zip((2000, 1000, 500, 500), SPLITS):
    assert len(questions[(task, split)]) == size  # no repeats inside a split either
  keys = list(questions)
  for i, a in enumerate(keys):
    for b in keys[i + 1 :]:
      assert not questions[a] & questions[b], (a, b)


def _template(question: str) -> str:
  """A question with its names, items and numbers blanked: what its phrasing is."""
  text = re.sub(r"\d+", "N", question)
  for name in word_problem_kinds.NAMES:
    text = re.sub(rf"\b{name}\b", "P", text)
  for item, _ in word_problem_kinds.ITEMS:
    text = text.replace(item, "I").replace(item[:-1], "I")
  return text


def test_out_of_domain_phrasings_and_kinds_never_appear_in_training():
  train = word_problems.generate_problems("wordmath", "train")
  train_templates = {_template(p.question) for _, p in train}
  train_kinds = {kind for kind, _ in train}
  assert train_kinds == set(word_problems.TRAINING_KINDS)
  ood = word_problems.generate_problems("wordmath_ood", "test")
  held_out_kinds = {kind for kind, _ in ood if "/" not in kind}
  assert held_out_kinds == set(word_problems.HELD_OUT_KINDS) and not held_out_kinds & train_kinds
  assert any(kind.endswith("/held_out_phrasing") for kind, _ in ood)
  for kind, problem in ood:
    assert _template(problem.question) not in train_templates, (kind, problem.question)
  # And the in-domain test split asks in the training phrasings only.
  for _, problem in word_problems.generate_problems("wordmath", "test"):
    assert _template(problem.question) in train_templates


@pytest.mark.parametrize("task,split", SPLITS)
def test_every_answer_and_final_number_equal_the_arithmetic_of_the_problem(task, split):
  examples = word_problems.generate(task, split)
  problems = word_problems.generate_problems(task, split)
  for example, (kind, problem) in zip(examples, problems, strict=True):
    computed = answers.evaluate_arithmetic(problem.expression)  # from the numbers, not the text
    assert computed == problem.answer == int(example.gold) >= 0, (kind, problem)
    assert answers.extract_answer(example, example.solution) == example.gold, (kind, example.solution)
    assert example.solution.endswith(f"{example.gold}.") and example.question.endswith("?")


def test_solutions_vary_in_wording():
  problems = word_problems.generate_problems("wordmath", "train", size=800)
  for kind in word_problems.TRAINING_KINDS:
    wordings = {_template(p.solution) for k, p in problems if k == kind}
    assert len(wordings) >= 4, (kind, wordings)
