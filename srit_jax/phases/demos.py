"""`srit-jax demos`: teacher chain-of-thought answers to training questions, scored against
gold and filtered, as instruction records the SFT phase reads.

Each line of demos.jsonl: task, id, instruction (the CoT prompt), input, output (the
rationale), question, choices, gold, teacher, family, sample, rationale, extracted, correct.
The teacher's own progress is resumable (local generations stream to a file; HTTP answers are
cached), so a rerun after a kill asks for nothing twice.
"""

from __future__ import annotations

import collections
import json
import pathlib
from collections.abc import Sequence

from srit_jax import io
from srit_jax.configs import checks
from srit_jax.configs.demos import KEEP
from srit_jax.tasks import answers, prompts
from srit_jax.tasks.example import Example
from srit_jax.tasks.registry import load_training_examples
from srit_jax.teachers.base import Teacher

HELD_OUT_FILE = "heldout.jsonl"  # demonstrations of the held-out questions, for SFT's held-out loss


def demonstration_records(
  examples: Sequence[Example], rationales: Sequence[Sequence[str]], teacher: Teacher
) -> list[dict]:
  """One scored record per (example, rationale)."""
  records = []
  for example, texts in zip(examples, rationales, strict=True):
    for sample, text in enumerate(texts):
      extracted = answers.extract_answer(example, text)
      records.append(
        {
          "task": example.task,
          "id": example.id,
          "instruction": prompts.prompt(example, prompts.COT),
          "input": "",
          "output": text,
          "question": example.question,
          "choices": list(example.choices),
          "gold": example.gold,
          "answer_type": example.answer_type,
          "teacher": teacher.name,
          "family": teacher.family,
          "sample": sample,
          "rationale": text,
          "extracted": extracted,
          "correct": answers.is_correct(example, extracted),
        }
      )
  return records


def filter_records(records: list[dict], keep: str) -> list[dict]:
  """ "correct": every correct rationale; "all": everything; "first_correct": one per question."""
  if keep == "all":
    return [r for r in records if r["output"].strip()]
  if keep == "correct":
    return [r for r in records if r["correct"]]
  if keep == "first_correct":
    seen, kept = set(), []
    for r in records:
      if r["correct"] and (r["task"], r["id"]) not in seen:
        seen.add((r["task"], r["id"]))
        kept.append(r)
    return kept
  raise ValueError(f"keep {keep!r} is not one of {KEEP}")


def summarize(records: list[dict], kept: list[dict], teacher: Teacher) -> dict:
  tasks = collections.defaultdict(lambda: {"questions": set(), "samples": 0, "correct": 0, "solved": set(), "kept": 0})
  for r in records:
    t = tasks[r["task"]]
    t["questions"].add(r["id"])
    t["samples"] += 1
    t["correct"] += r["correct"]
    if r["correct"]:
      t["solved"].add(r["id"])
  for r in kept:
    tasks[r["task"]]["kept"] += 1
  per_task = {
    name: {
      "questions": len(t["questions"]),
      "samples": t["samples"],
      "correct_samples": t["correct"],
      "accuracy": t["correct"] / max(1, t["samples"]),
      "questions_solved": len(t["solved"]),
      "kept": t["kept"],
    }
    for name, t in tasks.items()
  }
  return {"teacher": teacher.name, "family": teacher.family, "tasks": per_task}


def summary_table(summary: dict) -> str:
  lines = [
    f"Teacher {summary['teacher']} (family {summary['family']})",
    "",
    "| task | questions | samples | teacher accuracy | questions solved | kept |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  for name, t in summary["tasks"].items():
    lines.append(
      f"| {name} | {t['questions']} | {t['samples']} | {100 * t['accuracy']:.1f}% "
      f"| {t['questions_solved']} | {t['kept']} |"
    )
  return "\n".join(lines)


def run(config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
  from srit_jax.teachers.build import make_teacher

  checks.check(config, "demos")
  workdir = io.as_path(workdir)
  if io.is_writer():
    workdir.mkdir(parents=True, exist_ok=True)
  teacher = make_teacher(config.teacher, workdir, progress=progress)
  if not (io.is_writer() or teacher.needs_all_processes):
    io.barrier(f"demos {workdir}")  # process 0 asks the teacher and writes the files
    return json.loads((workdir / "summary.json").read_text(encoding="utf-8"))
  summary = _ask(teacher, config, workdir)
  if not teacher.needs_all_processes:
    io.barrier(f"demos {workdir}")
  return summary


def _ask(teacher, config, workdir: pathlib.Path) -> dict:
  examples = teacher.examples()
  asked = config.limit + config.heldout_questions if config.limit else 0  # checks: held-out ones need a limit
  if examples is None:
    examples = load_training_examples(
      config.task,
      config.split,
      source=config.source,
      data_dir=config.data_dir or None,
      hub_path=config.hub_path or None,
      limit=asked or None,
      seed=config.seed,
    )
  elif asked:
    examples = examples[:asked]
  rationales = teacher.rationales(examples, config.num_samples)
  records = demonstration_records(examples, rationales, teacher)
  # The questions after the first `limit` (heldout_questions of them) never train: their kept
  # demonstrations measure SFT's held-out loss (WORKDIR/heldout.jsonl).
  training_ids = {(e.task, e.id) for e in examples[: config.limit or None]}
  held_out = [r for r in records if (r["task"], r["id"]) not in training_ids]
  records = [r for r in records if (r["task"], r["id"]) in training_ids]
  kept = filter_records(records, config.keep)
  if not kept:
    raise ValueError(f"no demonstration kept (keep={config.keep!r}) of {len(records)} teacher answers")
  io.write_jsonl(workdir / "all_answers.jsonl", records)
  io.write_jsonl(workdir / "demos.jsonl", kept)
  summary = summarize(records, kept, teacher)
  if config.heldout_questions:
    kept_held_out = filter_records(held_out, config.keep)
    if not kept_held_out:
      raise ValueError(f"no held-out demonstration kept (keep={config.keep!r}) of {len(held_out)} teacher answers")
    io.write_jsonl(workdir / HELD_OUT_FILE, kept_held_out)
    summary["heldout"] = {"questions": config.heldout_questions, "kept": len(kept_held_out)}
  io.write_json(workdir / "summary.json", summary)
  print(summary_table(summary))
  print(workdir / "demos.jsonl")
  return summary
