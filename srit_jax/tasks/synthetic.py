"""Multi-step arithmetic word problems that the project writes itself, seeded, with worked
solutions: a task that needs no download. `arith` (2–3 steps of + − ×, numbers below 20) is
the in-domain task; `arith_hard` (4–5 steps that add ÷ and numbers up to 60) is harder and
out of domain. Test questions never appear in the train split."""

from __future__ import annotations

import random

from srit_jax.tasks.example import NUMBER, Example

NAMES = ("Ava", "Ben", "Chloe", "Dan", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena", "Omar", "Rosa", "Sam")
ITEMS = ("apples", "marbles", "stickers", "books", "coins", "pencils", "shells", "cards", "stamps", "cookies")
SPLIT_SIZES = {"train": 1000, "test": 300}
LEVELS = {
  # steps, largest operand, operations
  "arith": ((2, 3), 19, ("add", "sub", "mul")),
  "arith_hard": ((4, 5), 60, ("add", "sub", "mul", "div")),
}


def _step(rng: random.Random, op: str, total: int, largest: int, name: str, items: str, friend: str):
  """(question sentence, solution sentence, new total) or None when `op` does not fit `total`."""
  if op == "add":
    k = rng.randint(2, largest)
    return (
      f"Then {name} gets {k} more {items}.",
      f"After getting {k} more, {name} has {total} + {k} = {total + k} {items}.",
      total + k,
    )
  if op == "sub":
    if total < 2:
      return None
    k = rng.randint(1, min(total - 1, largest))
    return (
      f"Then {name} gives {k} {items} to {friend}.",
      f"After giving {k} away, {name} has {total} - {k} = {total - k} {items}.",
      total - k,
    )
  if op == "mul":
    if total > 200:
      return None
    k = rng.randint(2, 4)
    return (
      f"Then the number of {items} {name} has becomes {k} times as large.",
      f"{k} times as many is {total} * {k} = {total * k} {items}.",
      total * k,
    )
  divisors = [k for k in range(2, 7) if total % k == 0 and total // k >= 1]
  if not divisors:
    return None
  k = rng.choice(divisors)
  return (
    f"Then {name} splits the {items} equally into {k} bags and keeps one bag.",
    f"One bag of {k} holds {total} / {k} = {total // k} {items}.",
    total // k,
  )


def make_problem(task: str, rng: random.Random, identifier: str) -> Example:
  (low, high), largest, operations = LEVELS[task]
  name, friend = rng.sample(NAMES, 2)
  items = rng.choice(ITEMS)
  total = rng.randint(2, largest)
  question = [f"{name} has {total} {items}."]
  solution = [f"{name} starts with {total} {items}."]
  steps = rng.randint(low, high)
  while len(question) <= steps:
    step = _step(rng, rng.choice(operations), total, largest, name, items, friend)
    if step is not None:
      question.append(step[0])
      solution.append(step[1])
      total = step[2]
  question.append(f"How many {items} does {name} have now?")
  solution.append(f"The answer is {total}.")
  return Example(task, identifier, " ".join(question), str(total), NUMBER, solution=" ".join(solution))


def generate(task: str, split: str, *, size: int | None = None, seed: int = 0) -> list[Example]:
  """`size` problems of `task`'s `split` (train or test); the same arguments give the same problems."""
  if task not in LEVELS:
    raise ValueError(f"no synthetic task {task!r}; there are {sorted(LEVELS)}")
  if split not in SPLIT_SIZES:
    raise ValueError(f"synthetic task {task!r} has splits {sorted(SPLIT_SIZES)}, not {split!r}")
  held_out = set()
  if split == "train":
    held_out = {e.question for e in generate(task, "test", seed=seed)}
  rng = random.Random(f"{task}/{split}/{seed}")
  examples, seen = [], set(held_out)
  size = SPLIT_SIZES[split] if size is None else size
  while len(examples) < size:
    example = make_problem(task, rng, f"{split}-{len(examples)}")
    if example.question not in seen:
      seen.add(example.question)
      examples.append(example)
  return examples
