"""Math word problems in GSM8K's style that the project writes itself: many problem types, each
with several phrasings of the question and varied wording of its worked solution, seeded.

Three tasks come from one pool of problem kinds:

- `wordmath` (train / test): the training kinds in their training phrasings; the test split
  has new numbers, names and items, and no question of the train split.
- `wordmath_ood` (test): what no training example shows — kinds held out of training
  (ages, percentages, fractions, unit conversion) and the training kinds asked in held-out
  phrasings (the last phrasing of every kind is never used for training).
- `wordmath_hard` (test): three- and four-step problems that chain what the training kinds do.

Every problem also carries an arithmetic `expression` built from its numbers, so the tests
can check each answer (and each solution's final number) independently of the text.
"""

from __future__ import annotations

import random

from srit_jax.tasks.example import NUMBER, Example
from srit_jax.tasks.word_problem_kinds import HARD_KINDS, HELD_OUT_KINDS, PHRASINGS, TRAINING_KINDS, Draw, Problem

TASKS = ("wordmath", "wordmath_ood", "wordmath_hard")
SPLIT_SIZES = {"wordmath": {"train": 2000, "test": 1000}, "wordmath_ood": {"test": 500}, "wordmath_hard": {"test": 500}}


def make_problem(task: str, split: str, rng: random.Random) -> tuple[str, Problem]:
  """(kind, problem) for one draw of `task`'s `split`."""
  d = Draw(rng)
  if task == "wordmath":
    kind = rng.choice(sorted(TRAINING_KINDS))
    return kind, TRAINING_KINDS[kind](d, rng.randrange(PHRASINGS - 1))
  if task == "wordmath_ood":
    if rng.random() < 0.5:
      kind = rng.choice(sorted(HELD_OUT_KINDS))
      return kind, HELD_OUT_KINDS[kind](d, rng.randrange(2))
    kind = rng.choice(sorted(TRAINING_KINDS))
    return f"{kind}/held_out_phrasing", TRAINING_KINDS[kind](d, PHRASINGS - 1)
  kind = rng.choice(sorted(HARD_KINDS))
  return kind, HARD_KINDS[kind](d, rng.randrange(2))


def generate(task: str, split: str, *, size: int | None = None, seed: int = 0) -> list[Example]:
  """`size` problems of `task`'s `split`; the same arguments give the same problems, and no
  test question is a question of the train split (or an earlier question of its own)."""
  return [example for example, _ in _draw(task, split, size, seed)]


def generate_problems(task: str, split: str, *, size: int | None = None, seed: int = 0) -> list[tuple[str, Problem]]:
  """(kind, problem) of the same problems as `generate`, with their expressions (for checks)."""
  return [kind_and_problem for _, kind_and_problem in _draw(task, split, size, seed)]


def _draw(task: str, split: str, size: int | None, seed: int):
  if task not in SPLIT_SIZES:
    raise ValueError(f"no word-problem task {task!r}; there are {list(SPLIT_SIZES)}")
  if split not in SPLIT_SIZES[task]:
    raise ValueError(f"task {task!r} has splits {sorted(SPLIT_SIZES[task])}, not {split!r}")
  seen = set()
  if split != "train":
    seen = {e.question for e in generate("wordmath", "train", seed=seed)}
  rng = random.Random(f"{task}/{split}/{seed}")
  drawn = []
  size = SPLIT_SIZES[task][split] if size is None else size
  while len(drawn) < size:
    kind, problem = make_problem(task, split, rng)
    if problem.question in seen:
      continue
    seen.add(problem.question)
    example = Example(
      task, f"{split}-{len(drawn)}", problem.question, str(problem.answer), NUMBER, solution=problem.solution
    )
    drawn.append((example, (kind, problem)))
  return drawn
