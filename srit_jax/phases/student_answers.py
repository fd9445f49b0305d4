"""The student's own answers to its training questions, and the preference pairs made of them:
steps 1 and 2 of `srit-jax refine` (srit_jax/phases/refine.py).

The questions are the task's training split or the demonstrations' questions, and with
`new_questions` that many more training questions that no demonstration answers. Samples stream
to WORKDIR/samples.*.jsonl, each file with its fingerprint, so a killed run keeps what it
sampled and a rerun with other DPO settings keeps them all.
"""

from __future__ import annotations

import dataclasses
import pathlib

from srit_jax import io
from srit_jax.configs.refine import QUESTIONS
from srit_jax.data import preference_pairs, records
from srit_jax.generation.jsonl import generate_texts
from srit_jax.generation.next_token import SamplingSettings
from srit_jax.tasks import prompts
from srit_jax.tasks.example import Example
from srit_jax.tasks.registry import load_training_examples


def draw_seed(config) -> int:
  """The seed of the student's samples, the held-out questions and the pair order: `seed`'s own
  unless `sampling_seed` asks for another draw on the same questions (rounds add 1000 each)."""
  return config.seed + 1_000_000 * config.sampling_seed


def samples_file(style: str) -> str:
  return f"samples.{style}.jsonl"


CORRECTED = "corrected"  # the student's continuations of its answers from a slip set right (slip_corrected)

# The student's samples and their fingerprints: each file is remade when its own fingerprint
# (model, prompts, sampling settings) no longer matches, so a rerun with other DPO settings keeps them.
SAMPLE_FILES = tuple(
  name
  for style in (prompts.COT, prompts.DIRECT, CORRECTED)
  for name in (samples_file(style), samples_file(style) + ".meta.json")
)


def _task_training_split(config, limit: int | None) -> list[Example]:
  return load_training_examples(
    config.task,
    config.split,
    source=config.source,
    data_dir=config.data_dir or None,
    hub_path=config.hub_path or None,
    limit=limit,
    seed=config.seed,
  )


def _demonstrated_questions(demos_file: str) -> list[Example]:
  examples, seen = [], set()
  for record in records.read_demonstrations(demos_file):
    key = (record["task"], str(record["id"]))
    if key not in seen:
      seen.add(key)
      examples.append(
        Example(
          record["task"], str(record["id"]), record["question"], record["gold"], record["answer_type"],
          tuple(record["choices"]),
        )
      )  # fmt: skip
  return examples


def training_questions(config) -> list[Example]:
  """The task's training split, or (questions="demos") the questions of the demonstrations file
  (at most `limit`); then `new_questions` training questions of the task that the demonstrations
  file does not hold, in the split's order."""
  if config.questions == "task":
    examples = _task_training_split(config, config.limit or None)
  elif config.questions == "demos":
    if not config.demos_file:
      raise ValueError("questions='demos' needs demos_file")
    examples = _demonstrated_questions(config.demos_file)
    examples = examples[: config.limit] if config.limit else examples
  else:
    raise ValueError(f"questions {config.questions!r} is not one of {QUESTIONS}")
  if not config.new_questions:
    return examples
  if not config.demos_file:
    raise ValueError("new_questions needs demos_file (the questions it must not repeat)")
  taught = {(r["task"], str(r["id"])) for r in records.read_demonstrations(config.demos_file, ("task", "id"))}
  taught |= {(e.task, e.id) for e in examples}
  new = [e for e in _task_training_split(config, None) if (e.task, e.id) not in taught][: config.new_questions]
  if len(new) < config.new_questions:
    print(f"new_questions: only {len(new)} training questions of {config.task} are not demonstrated")
  return examples + new


def teacher_demonstrations(path: str) -> dict[tuple[str, str], str]:
  """The first correct demonstration per (task, id) of a demos.jsonl file."""
  demos = {}
  for record in records.read_demonstrations(path, ("task", "id", "output")):
    if record.get("correct", True):
      demos.setdefault((record["task"], str(record["id"])), record["output"])
  return demos


def sample_answers(model, examples, workdir: pathlib.Path, config, *, progress: bool, made_elsewhere=()):
  """Scored samples of the student per style and example (CoT and direct), through resumable files."""
  settings = SamplingSettings(config.temperature, config.top_k, config.top_p)
  counts = {prompts.COT: config.num_cot_samples, prompts.DIRECT: config.num_direct_samples}
  lengths = {prompts.COT: config.max_new_tokens, prompts.DIRECT: config.max_new_tokens_direct}
  scored = {}
  for style, count in counts.items():
    if count <= 0:
      scored[style] = [[] for _ in examples]
      continue
    records = [
      {
        "prompt": prompts.prompt(e, style),
        "response_prefix": prompts.response_prefix(e, style),
        "id": f"{e.task}/{e.id}",
      }
      for e in examples
    ]
    completions = generate_texts(
      model,
      records,
      workdir / samples_file(style),
      max_new_tokens=lengths[style],
      settings=settings,
      num_samples=count,
      seed=draw_seed(config) + 1000 * (config.round - 1),
      batch_size=config.generate_batch_size,
      stop_strings=prompts.stop_strings(style, config.stop_strings),
      chat_template=config.use_chat_template,
      progress=progress,
      made_elsewhere=made_elsewhere,
    )
    scored[style] = [preference_pairs.score_answers(e, c, style) for e, c in zip(examples, completions)]
  return scored


def sample_corrections(
  model, examples, cot, workdir: pathlib.Path, config, *, progress: bool, made_elsewhere=()
) -> list[dict]:
  """Per question {sample: scored answer}: the student's greedy continuation of each wrong CoT
  answer from its first wrong calculation, set right (`slip_corrected`), through a resumable file."""
  found = preference_pairs.slip_corrections(cot)
  corrections = [{} for _ in examples]
  if not found:
    return corrections
  records = [
    {
      "prompt": prompts.prompt(examples[index], prompts.COT),
      "response_prefix": prefix,
      "id": f"{examples[index].task}/{examples[index].id}/{sample}",
    }
    for index, sample, prefix in found
  ]
  completions = generate_texts(
    model,
    records,
    workdir / samples_file(CORRECTED),
    max_new_tokens=config.max_new_tokens,
    settings=SamplingSettings(temperature=0.0),
    batch_size=config.generate_batch_size,
    stop_strings=prompts.stop_strings(prompts.COT, config.stop_strings),
    chat_template=config.use_chat_template,
    progress=progress,
    made_elsewhere=made_elsewhere,
  )
  for (index, sample, _), (completion,) in zip(found, completions, strict=True):
    (scored,) = preference_pairs.score_answers(examples[index], [completion], prompts.COT)
    corrections[index][sample] = dataclasses.replace(scored, sample=sample)
  return corrections


def write_pairs(config, examples, samples, corrections, workdir: pathlib.Path):
  """(training pairs, held-out pairs, their statistics) of the scored samples by the configured
  strategy, written to WORKDIR/pairs.jsonl, heldout_pairs.jsonl and pair_stats.json."""
  pairs, stats = preference_pairs.build_pairs(
    examples,
    samples,
    strategy=config.strategy,
    max_pairs_per_question=config.max_pairs_per_question,
    teacher_demos=teacher_demonstrations(config.demos_file) if config.teacher_fallback else None,
    corrections=corrections,
  )
  train_pairs, held_out_pairs = preference_pairs.split_held_out(pairs, config.heldout_fraction, draw_seed(config))
  io.write_jsonl(workdir / "pairs.jsonl", train_pairs)
  io.write_jsonl(workdir / "heldout_pairs.jsonl", held_out_pairs)
  stats.update(train_pairs=len(train_pairs), heldout_pairs=len(held_out_pairs))
  io.write_json(workdir / "pair_stats.json", stats)
  print(
    f"{stats['questions']} questions, {stats['questions_with_correct_cot']} with a correct CoT sample "
    f"(CoT {stats['cot_correct']}/{stats['cot_samples']}, direct {stats['direct_correct']}/{stats['direct_samples']} "
    f"correct); {len(train_pairs)} training pairs, {len(held_out_pairs)} held out ({config.strategy})"
  )
  for warning in stats["warnings"]:
    print(f"warning: the preference pairs look degenerate: {warning}")
  return train_pairs, held_out_pairs, stats
