"""Preference pairs from the student's own samples: the data of the self-refinement phase.

The instructed student answers each training question n times with the CoT prompt and m times
with the direct-answer prompt; answers are scored against gold; pairs are built by a named
strategy, all under the CoT prompt (the behaviour being refined):

- `cot_vs_direct` — chosen: a CoT answer that reaches the gold answer; rejected: a direct
  answer (no reasoning). Our reading of the paper: it prefers reasoning that arrives over a
  flat answer.
- `correct_vs_incorrect` — chosen: a correct CoT answer; rejected: a wrong CoT answer.

With `teacher_fallback`, a question the student never answers correctly takes the teacher's
demonstration as chosen. At most `max_pairs_per_question` pairs per question, spread over
different chosen and rejected answers; identical chosen and rejected texts never pair.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import pathlib
from collections.abc import Sequence

from srit_jax.data import io
from srit_jax.tasks import answers, prompts
from srit_jax.tasks.example import Example

STRATEGIES = ("cot_vs_direct", "correct_vs_incorrect")


@dataclasses.dataclass(frozen=True)
class ScoredAnswer:
  style: str  # "cot" or "direct"
  sample: int
  text: str
  extracted: str | None
  correct: bool


def score_answers(example: Example, texts: Sequence[str], style: str) -> list[ScoredAnswer]:
  out = []
  for sample, text in enumerate(texts):
    extracted = answers.extract_answer(example, text)
    out.append(ScoredAnswer(style, sample, text, extracted, answers.is_correct(example, extracted)))
  return out


def _spread(num_chosen: int, num_rejected: int, cap: int) -> list[tuple[int, int]]:
  """Up to `cap` (chosen, rejected) index pairs, visiting new answers on both sides first."""
  order = sorted(itertools.product(range(num_chosen), range(num_rejected)), key=lambda ij: (max(ij), ij[0] + ij[1], ij))
  return order[:cap]


def build_pairs(
  examples: Sequence[Example],
  samples: dict[str, list[list[ScoredAnswer]]],
  *,
  strategy: str = "cot_vs_direct",
  max_pairs_per_question: int = 4,
  teacher_demos: dict[tuple[str, str], str] | None = None,
) -> tuple[list[dict], dict]:
  """(pairs, statistics). `teacher_demos` maps (task, id) to a demonstration for the fallback."""
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
  stats = {
    "strategy": strategy,
    "questions": len(examples),
    "questions_with_correct_cot": 0,
    "questions_with_teacher_chosen": 0,
    "questions_with_pairs": 0,
    "pairs": 0,
    "pairs_student_chosen": 0,
    "pairs_teacher_chosen": 0,
    "cot_samples": 0,
    "cot_correct": 0,
    "direct_samples": 0,
    "direct_correct": 0,
  }
  pairs = []
  for index, example in enumerate(examples):
    cot = samples.get(prompts.COT, [[]] * len(examples))[index]
    direct = samples.get(prompts.DIRECT, [[]] * len(examples))[index]
    stats["cot_samples"] += len(cot)
    stats["cot_correct"] += sum(a.correct for a in cot)
    stats["direct_samples"] += len(direct)
    stats["direct_correct"] += sum(a.correct for a in direct)
    chosen = _unique([(a.text, "student", a.sample) for a in cot if a.correct and a.text.strip()])
    if chosen:
      stats["questions_with_correct_cot"] += 1
    elif teacher_demos and (example.task, example.id) in teacher_demos:
      chosen = [(teacher_demos[(example.task, example.id)], "teacher", -1)]
      stats["questions_with_teacher_chosen"] += 1
    if strategy == "cot_vs_direct":
      rejected = _unique([(a.text, "direct", a.sample) for a in direct if a.text.strip()])
    else:
      rejected = _unique([(a.text, "cot", a.sample) for a in cot if not a.correct and a.text.strip()])
    made = 0
    for i, j in _spread(len(chosen), len(rejected), max_pairs_per_question * 4):
      if made == max_pairs_per_question:
        break
      (chosen_text, source, chosen_sample), (rejected_text, rejected_style, rejected_sample) = chosen[i], rejected[j]
      if chosen_text.strip() == rejected_text.strip():
        continue
      pairs.append(
        {
          "task": example.task,
          "id": example.id,
          "prompt": prompts.prompt(example, prompts.COT),
          "chosen": chosen_text,
          "rejected": rejected_text,
          "kind": strategy,
          "chosen_source": source,
          "chosen_sample": chosen_sample,
          "rejected_style": rejected_style,
          "rejected_sample": rejected_sample,
          "gold": example.gold,
        }
      )
      made += 1
      stats[f"pairs_{source}_chosen"] += 1
    stats["pairs"] += made
    stats["questions_with_pairs"] += made > 0
  return pairs, stats


def _unique(items: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
  seen, out = set(), []
  for item in items:
    if item[0].strip() not in seen:
      seen.add(item[0].strip())
      out.append(item)
  return out


def is_held_out(task: str, identifier: str, fraction: float, seed: int = 0) -> bool:
  """A fixed `fraction` of questions, chosen by hash, whose pairs never train (for reward accuracy)."""
  digest = hashlib.sha256(f"{seed}/{task}/{identifier}".encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_held_out(pairs: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
  train = [p for p in pairs if not is_held_out(p["task"], p["id"], fraction, seed)]
  held_out = [p for p in pairs if is_held_out(p["task"], p["id"], fraction, seed)]
  return train, held_out


def read_pairs(path: str | pathlib.Path) -> list[dict]:
  """Pairs from JSONL; an error names the file, line and field."""
  return [pair for _, pair in io.read_records(path, required={"prompt": str, "chosen": str, "rejected": str})]
