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
import os
import pathlib
from collections.abc import Sequence

from srit_jax.tasks import answers, prompts
from srit_jax.tasks.example import Example
from srit_jax.tasks.registry import get_task, load_examples
from srit_jax.teachers.base import Teacher

KEEP = ("correct", "all", "first_correct")


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


def write_jsonl(path: pathlib.Path, records: list[dict]) -> None:
  """Written beside and renamed into place, so a kill never leaves half a file."""
  partial = path.with_suffix(path.suffix + ".partial")
  with open(partial, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())
  partial.replace(path)


def training_examples(config) -> list[Example]:
  task = get_task(config.task)
  split = config.split or task.train_split
  if split is None:
    raise ValueError(f"task {task.name} has no training split; name one with --config.split")
  return load_examples(
    task.name,
    split,
    source=config.source,
    data_dir=config.data_dir or None,
    hub_path=config.hub_path or None,
    limit=config.limit or None,
    seed=config.seed,
  )


def run(config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
  from srit_jax.teachers.build import make_teacher

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  teacher = make_teacher(config.teacher, workdir, progress=progress)
  examples = teacher.examples()
  if examples is None:
    examples = training_examples(config)
  elif config.limit:
    examples = examples[: config.limit]
  rationales = teacher.rationales(examples, config.num_samples)
  records = demonstration_records(examples, rationales, teacher)
  kept = filter_records(records, config.keep)
  if not kept:
    raise ValueError(f"no demonstration kept (keep={config.keep!r}) of {len(records)} teacher answers")
  write_jsonl(workdir / "all_answers.jsonl", records)
  write_jsonl(workdir / "demos.jsonl", kept)
  summary = summarize(records, kept, teacher)
  (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print(summary_table(summary))
  print(workdir / "demos.jsonl")
  return summary
