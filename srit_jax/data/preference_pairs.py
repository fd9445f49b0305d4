"""Preference pairs from the student's own samples: the data of the self-refinement phase.

The instructed student answers each training question n times with the CoT prompt and m times
with the direct-answer prompt — its answer opened with the answer phrase ("The answer is"), so
that a direct answer is an answer, not the start of a chain of thought cut by the length
limit. Answers are scored against gold; pairs are built by a named strategy, all under the
CoT prompt (the behaviour being refined):

- `cot_vs_direct` — chosen: a CoT answer that reaches the gold answer; rejected: a direct
  answer (no reasoning). Our reading of the paper: it prefers reasoning that arrives over a
  flat answer.
- `correct_vs_incorrect` — chosen: a correct CoT answer; rejected: a wrong CoT answer.
- `mixed` — both kinds, the per-question cap shared between them.
- `slip_corrected` — rejected: a wrong CoT answer holding a wrong calculation; chosen: the
  same answer up to that calculation, its result written right, then continued by the student
  itself (greedy) and reaching the gold answer (`slip_corrections` says which answers to
  continue, from where). The two sides share everything before the slip, so the preference
  falls on the step that went wrong (as Step-DPO's pairs do, with a calculator for judge).

A rejected answer never was cut by the length limit and is never a prefix of its chosen
answer (such pairs teach "do not stop mid-sentence", not reasoning); identical texts never
pair. With `teacher_fallback`, a question the student never answers correctly takes the
teacher's demonstration as chosen. At most `max_pairs_per_question` pairs per question,
spread over different chosen and rejected answers. The statistics say what the rejected side
is made of (stop reasons, stated answers, length against the chosen side) and
`warnings(stats)` names pairs that look degenerate.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import pathlib
from collections.abc import Sequence

from srit_jax import io
from srit_jax.tasks import answers, arithmetic, prompts
from srit_jax.tasks.example import Example

STRATEGIES = ("cot_vs_direct", "correct_vs_incorrect", "mixed", "slip_corrected")


@dataclasses.dataclass(frozen=True)
class ScoredAnswer:
  style: str  # "cot" or "direct"
  sample: int
  text: str
  extracted: str | None
  correct: bool
  stop_reason: str = "eos"  # "eos", "stop" or "length" (cut by the length limit)


def score_answers(example: Example, completions: Sequence, style: str) -> list[ScoredAnswer]:
  """Scored samples from completions (text and stop reason) or plain texts."""
  out = []
  for sample, completion in enumerate(completions):
    text, stop = (completion, "eos") if isinstance(completion, str) else (completion.text, completion.stop_reason)
    extracted = answers.extract_answer(example, text)
    out.append(ScoredAnswer(style, sample, text, extracted, answers.is_correct(example, extracted), stop))
  return out


def _spread(num_chosen: int, num_rejected: int, cap: int) -> list[tuple[int, int]]:
  """Up to `cap` (chosen, rejected) index pairs, visiting new answers on both sides first."""
  order = sorted(itertools.product(range(num_chosen), range(num_rejected)), key=lambda ij: (max(ij), ij[0] + ij[1], ij))
  return order[:cap]


def _unique(answers_: list[ScoredAnswer]) -> list[ScoredAnswer]:
  seen, out = set(), []
  for answer in answers_:
    if answer.text.strip() not in seen:
      seen.add(answer.text.strip())
      out.append(answer)
  return out


def _rejected_candidates(kind: str, cot: list[ScoredAnswer], direct: list[ScoredAnswer], stats: dict):
  """Answers that may be rejected for a pair of `kind`; those cut by the length limit are counted and left out."""
  pool = [a for a in direct] if kind == "cot_vs_direct" else [a for a in cot if not a.correct]
  usable = []
  for answer in pool:
    if not answer.text.strip():
      continue
    if answer.stop_reason == "length":
      stats["rejected_cut_by_length_left_out"] += 1
      continue
    usable.append(answer)
  return _unique(usable)


def slip_corrections(cot: Sequence[Sequence[ScoredAnswer]]) -> list[tuple[int, int, str]]:
  """(question, sample, corrected prefix) of every wrong CoT answer, not cut by the length
  limit, with a wrong calculation: the answers `slip_corrected` continues from the slip set right."""
  found = []
  for index, answers_ in enumerate(cot):
    for answer in answers_:
      if answer.correct or answer.stop_reason == "length":
        continue
      prefix = arithmetic.corrected_prefix(answer.text)
      if prefix is not None:
        found.append((index, answer.sample, prefix))
  return found


def _candidates(kind, chosen, rejected, fixes, cap):
  """(chosen text, source, chosen sample, rejected answer) in the order pairs are tried."""
  if kind == "slip_corrected":  # each wrong answer with its own correction, where that is right
    return [
      (fixes[a.sample].text, "corrected", a.sample, a)
      for a in rejected
      if a.sample in fixes and fixes[a.sample].correct
    ]
  return [(*chosen[i], rejected[j]) for i, j in _spread(len(chosen), len(rejected), cap * 4)]


def build_pairs(
  examples: Sequence[Example],
  samples: dict[str, list[list[ScoredAnswer]]],
  *,
  strategy: str = "cot_vs_direct",
  max_pairs_per_question: int = 4,
  teacher_demos: dict[tuple[str, str], str] | None = None,
  corrections: Sequence[dict[int, ScoredAnswer]] | None = None,
) -> tuple[list[dict], dict]:
  """(pairs, statistics). `teacher_demos` maps (task, id) to a demonstration for the fallback;
  `corrections` (slip_corrected) holds per question {sample: its scored corrected answer}."""
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy {strategy!r} is not one of {STRATEGIES}")
  kinds = ("cot_vs_direct", "correct_vs_incorrect") if strategy == "mixed" else (strategy,)
  stats = collections.Counter(questions=len(examples))
  rejected_stops: collections.Counter = collections.Counter()
  length_ratios, stated = [], 0
  pairs = []
  for index, example in enumerate(examples):
    cot = samples.get(prompts.COT, [[]] * len(examples))[index]
    direct = samples.get(prompts.DIRECT, [[]] * len(examples))[index]
    stats["cot_samples"] += len(cot)
    stats["cot_correct"] += sum(a.correct for a in cot)
    stats["cot_cut_by_length"] += sum(a.stop_reason == "length" for a in cot)
    stats["direct_samples"] += len(direct)
    stats["direct_correct"] += sum(a.correct for a in direct)
    stats["direct_with_answer"] += sum(a.extracted is not None for a in direct)
    stats["direct_cut_by_length"] += sum(a.stop_reason == "length" for a in direct)
    fixes = corrections[index] if corrections else {}
    stats["slips_corrected"] += len(fixes)
    stats["slips_corrected_reaching_gold"] += sum(f.correct for f in fixes.values())
    chosen = [(a.text, "student", a.sample) for a in _unique([a for a in cot if a.correct and a.text.strip()])]
    if chosen:
      stats["questions_with_correct_cot"] += 1
    elif teacher_demos and strategy != "slip_corrected" and (example.task, example.id) in teacher_demos:
      chosen = [(teacher_demos[(example.task, example.id)], "teacher", -1)]
      stats["questions_with_teacher_chosen"] += 1
    made = 0
    for k, kind in enumerate(kinds):
      cap = (max_pairs_per_question - made) // (len(kinds) - k)  # the cap shared between the kinds
      rejected = _rejected_candidates(kind, cot, direct, stats)
      made_of_kind = 0
      for chosen_text, source, chosen_sample, answer in _candidates(kind, chosen, rejected, fixes, cap):
        if made_of_kind == cap:
          break
        if chosen_text.strip() == answer.text.strip():
          continue
        if chosen_text.strip().startswith(answer.text.strip()):
          stats["rejected_prefix_of_chosen_left_out"] += 1
          continue
        pairs.append(
          {
            "task": example.task,
            "id": example.id,
            "prompt": prompts.prompt(example, prompts.COT),
            "chosen": chosen_text,
            "rejected": answer.text,
            "kind": kind,
            "chosen_source": source,
            "chosen_sample": chosen_sample,
            "rejected_style": answer.style,
            "rejected_sample": answer.sample,
            "rejected_stop_reason": answer.stop_reason,
            "rejected_correct": answer.correct,
            "gold": example.gold,
          }
        )
        rejected_stops[answer.stop_reason] += 1
        stated += answer.extracted is not None
        length_ratios.append(len(chosen_text) / max(len(answer.text), 1))
        stats[f"pairs_{source}_chosen"] += 1
        stats[f"pairs_{kind}"] += 1
        made_of_kind += 1
      made += made_of_kind
    stats["pairs"] += made
    stats["questions_with_pairs"] += made > 0
  out = {"strategy": strategy, **dict(stats)}
  for key in (
    "pairs", "pairs_student_chosen", "pairs_teacher_chosen", "questions_with_correct_cot",
    "questions_with_teacher_chosen", "questions_with_pairs", "cot_samples", "cot_correct", "direct_samples",
    "direct_correct",
  ):  # fmt: skip
    out.setdefault(key, 0)
  out["rejected_stop_reasons"] = dict(rejected_stops)
  out["rejected_with_stated_answer"] = stated / max(len(pairs), 1)
  out["chosen_to_rejected_length_ratio"] = sum(length_ratios) / max(len(length_ratios), 1)
  out["warnings"] = warnings(out)
  return pairs, out


def warnings(stats: dict) -> list[str]:
  """What makes a set of pairs look degenerate: what they would teach is not reasoning."""
  found = []
  if not stats["pairs"]:
    found.append("no pair was built: the student never answered correctly and no teacher demonstration stood in")
    return found
  if stats["pairs"] < 8:
    found.append(f"only {stats['pairs']} pairs: too few to move the student; sample more questions")
  left_out = stats.get("rejected_cut_by_length_left_out", 0)
  if left_out and left_out >= stats["pairs"]:
    found.append(
      f"{left_out} rejected samples were cut by the length limit and left out: raise max_new_tokens_direct "
      "(direct answers) or max_new_tokens (CoT)"
    )
  if stats.get("rejected_prefix_of_chosen_left_out", 0) >= stats["pairs"]:
    found.append(f"{stats['rejected_prefix_of_chosen_left_out']} rejected answers were prefixes of their chosen one")
  if stats["rejected_with_stated_answer"] < 0.5:
    found.append(
      f"only {100 * stats['rejected_with_stated_answer']:.0f}% of rejected answers state an answer: "
      "the pairs oppose answers to non-answers"
    )
  if stats.get("pairs_teacher_chosen", 0) > 0.9 * stats["pairs"]:
    found.append("nearly every chosen answer is the teacher's: the student rarely solves the questions")
  return found


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
