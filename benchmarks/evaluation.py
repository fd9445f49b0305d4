"""Answering real benchmark questions: one batch after another vs. a batch refilled as rows end,
and the prompts' shared prefix prefilled once vs. with every row.

    python benchmarks/evaluation.py --model=runs/study/base/sft/export --task=wordmath \\
        --questions=256 --batch=64 --max_new_tokens=128
    python benchmarks/evaluation.py ... --ways=refilled,refilled_unshared
    python benchmarks/evaluation.py ... --samples=4 --temperature=0.7 --top_p=0.95 --ways=refilled,refilled_unshared

Greedy chain-of-thought answers as `srit-jax eval` makes them: the task's prompts through the
chat template, EOS and the task's stop strings on, prompts started in order of length. Static
batches decode until their longest answer ends; a refilled batch prefills the next prompts into
rows as they finish; `refilled_unshared` is the refilled batch with each row's whole prompt
prefilled (the prefix every prompt shares, the chat template's system turn and the task's
instruction, not prefilled once; with `--samples` above 1, a question's samples not sharing one
prefill of its prompt either: refinement's sampling, at its temperature). Each way runs once
untimed (compiling every program it meets), then `--rounds` times, in turn from a different
first way each round (the fastest run of each is kept); all must give the same answers
(checked: tokens equal; sampled answers may part where rounding moves a draw across a
boundary, and how many do is reported). Reported per way: seconds, answers/s and new tokens/s;
for static batches also the share of row-steps that decode a live row (the rest wait for their
batch's longest answer, or are idle rows of a short last batch).
"""

from __future__ import annotations

import time

import common
from absl import app, flags

_TASK = flags.DEFINE_string("task", "wordmath", "the task whose test questions are answered")
_QUESTIONS = flags.DEFINE_integer("questions", 256, "questions answered")
_BATCH = flags.DEFINE_integer("batch", 64, "rows decoded together")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "tokens per answer at most")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "timed runs of each way")
_SAMPLES = flags.DEFINE_integer("samples", 1, "answers per question (rows that share a prompt)")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "sampling temperature (0: greedy)")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling's share of the probability mass")
WAYS = {"static": dict(refill=False), "refilled": dict(refill=True), "refilled_unshared": dict(share_prefix=False)}
_WAYS = flags.DEFINE_list("ways", ["static", "refilled"], f"ways to answer, of {', '.join(WAYS)}")


def _rows(model):
  from srit_jax.generation import batched, jsonl
  from srit_jax.tasks import prompts
  from srit_jax.tasks.registry import get_task, load_examples

  if model.tokenizer is None:
    raise app.UsageError("--model must be a checkpoint with a tokenizer: the questions are text")
  examples = load_examples(_TASK.value, get_task(_TASK.value).eval_split, limit=_QUESTIONS.value, seed=0)
  records = [
    {"prompt": prompts.prompt(e, prompts.COT), "response_prefix": prompts.response_prefix(e, prompts.COT)}
    for e in examples
  ]
  tokens = [jsonl.encode_prompt(model.tokenizer, r, True, where=f"question {i}") for i, r in enumerate(records)]
  order = sorted(range(len(tokens)), key=lambda i: (len(tokens[i]), i))
  rows = [batched.Row(i, s, tokens[i]) for i in order for s in range(_SAMPLES.value)]
  return rows, prompts.stop_strings(prompts.COT, ())


def _answer(model, rows, stop_strings, way: str):
  from srit_jax.generation import batched
  from srit_jax.generation.next_token import SamplingSettings

  start = time.perf_counter()
  generations = batched.generate_rows(
    model.config,
    model.params,
    rows,
    settings=SamplingSettings(temperature=_TEMPERATURE.value, top_p=_TOP_P.value),
    max_new_tokens=_MAX_NEW_TOKENS.value,
    batch_size=_BATCH.value,
    stop_strings=stop_strings,
    tokenizer=model.tokenizer,
    mesh=model.mesh,
    **WAYS[way],
  )
  return time.perf_counter() - start, generations


def _live_share_of_static_batches(lengths: list[int], batch: int) -> float:
  """Row-steps that decode a live row over all row-steps, batches of `batch` in order."""
  busy = sum(lengths)
  spent = sum(batch * max(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
  return busy / spent


def main(argv):
  del argv
  from srit_jax.generation import batched

  ways = _WAYS.value
  unknown = [w for w in ways if w not in WAYS]
  if unknown or not ways:
    raise app.UsageError(f"--ways: unknown {unknown}; of {', '.join(WAYS)}")
  model = common.model()
  rows, stop_strings = _rows(model)
  sampled = _TEMPERATURE.value > 0
  # Compile every way's programs first (every prompt bucket and group size they meet).
  _, reference = _answer(model, rows, stop_strings, ways[0])
  differing = {}

  def check(way, generations):
    differ = sum(a.tokens != b.tokens for a, b in zip(generations, reference))
    if differ and not sampled:
      raise SystemExit(f"{way} and {ways[0]} answered {differ} of {len(rows)} rows differently")
    differing[way] = max(differ, differing.get(way, 0))

  for way in ways[1:]:
    check(way, _answer(model, rows, stop_strings, way)[1])
  times = {way: [] for way in ways}
  for n in range(_ROUNDS.value):
    for way in ways[n % len(ways) :] + ways[: n % len(ways)]:
      seconds, generations = _answer(model, rows, stop_strings, way)
      check(way, generations)
      times[way].append(seconds)
  lengths = [len(g.tokens) for g in reference]
  new_tokens = sum(lengths)
  results = {
    "machine": common.machine(),
    "task": _TASK.value,
    "questions": len(rows) // _SAMPLES.value,
    "samples": _SAMPLES.value,
    "temperature": _TEMPERATURE.value,
    "top_p": _TOP_P.value,
    "rows": len(rows),
    "answers_differing_from_the_first_way": differing,
    "batch": _BATCH.value,
    "max_new_tokens": _MAX_NEW_TOKENS.value,
    "new_tokens": new_tokens,
    "answer_tokens": {"mean": new_tokens / len(rows), "max": max(lengths)},  # per row
    "runs": {},
  }
  for way, seconds in times.items():
    best = min(seconds)
    results["runs"][way] = {
      "seconds": seconds,
      "answers_per_s": len(rows) / best,  # rows: a question's samples count apart
      "new_tokens_per_s": new_tokens / best,
    }
  # `reference` is in the order of `rows`: the order static batches take them.
  if "static" in times:
    results["runs"]["static"]["live_row_step_share"] = _live_share_of_static_batches(lengths, _BATCH.value)
  if {"static", "refilled"} <= set(times):
    results["refilled_speedup"] = min(times["static"]) / min(times["refilled"])
  if {"refilled", "refilled_unshared"} <= set(times):
    results["shared_prefix_speedup"] = min(times["refilled_unshared"]) / min(times["refilled"])
    results["shared_prefix_tokens"] = batched.shared_prefix_length([row.prompt for row in rows])
    results["prompt_tokens_mean"] = sum(len(row.prompt) for row in rows) / len(rows)
  common.report(results)


if __name__ == "__main__":
  app.run(main)
