"""`srit-jax eval`: greedy accuracy of a model on a list of tasks, with chain-of-thought (and,
optionally, direct answers), 95% Wilson intervals, per-example JSONL, summary JSON and a
Markdown table. On numeric tasks each entry also says how many CoT answers hold a wrong
arithmetic step and how accurate the others are (srit_jax/tasks/arithmetic.py): a slip of
calculation against a wrong chain of reasoning. Generations stream to disk, so a killed
evaluation resumes."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from srit_jax import io
from srit_jax.generation.jsonl import Completion, generate_texts
from srit_jax.generation.sampler import SamplingSettings
from srit_jax.statistics import wilson_interval
from srit_jax.tasks import answers, arithmetic, prompts
from srit_jax.tasks.example import NUMBER, Example
from srit_jax.tasks.registry import get_task, load_examples, task_names


def score_generations(examples: Sequence[Example], completions: Sequence[Completion], style: str) -> list[dict]:
  rows = []
  for example, completion in zip(examples, completions, strict=True):
    text = completion.text
    extracted = answers.extract_answer(example, text)
    rows.append(
      {
        "task": example.task,
        "id": example.id,
        "style": style,
        "prompt": prompts.prompt(example, style),
        "generation": text,
        "stop_reason": completion.stop_reason,
        "extracted": extracted,
        "gold": example.gold,
        "correct": answers.is_correct(example, extracted),
      }
    )
  return rows


def per_question_outcomes(answers: str | pathlib.Path) -> dict[str, bool]:
  """Question id -> correct, from an evaluation's answers file (TASK.cot.jsonl): what paired
  statistics compare."""
  return {str(row["id"]): row["correct"] for _, row in io.read_records(answers)}


def accuracy_entry(rows: list[dict]) -> dict:
  correct = sum(r["correct"] for r in rows)
  low, high = wilson_interval(correct, len(rows))
  return {"n": len(rows), "correct": correct, "accuracy": correct / max(1, len(rows)), "ci95": [low, high]}


def evaluate(
  model,
  examples_by_task: dict[str, list[Example]],
  out_dir: str | pathlib.Path,
  *,
  styles: Sequence[str] = (prompts.COT,),
  max_new_tokens: dict[str, int] | None = None,
  batch_size: int = 16,
  chat_template: bool = True,
  stop_strings: Sequence[str] = (),
  progress: bool = True,
) -> dict:
  """Accuracy per task and prompt style; writes {task}.{style}.jsonl, summary.json, results.md."""
  out_dir = io.as_path(out_dir)
  max_new_tokens = {prompts.COT: 256, prompts.DIRECT: 32, **(max_new_tokens or {})}
  summary: dict[str, dict] = {}
  for task, examples in examples_by_task.items():
    for style in styles:
      records = [
        {"prompt": prompts.prompt(e, style), "response_prefix": prompts.response_prefix(e, style), "id": e.id}
        for e in examples
      ]
      completions = generate_texts(
        model,
        records,
        out_dir / f"{task}.{style}.generations.jsonl",
        max_new_tokens=max_new_tokens[style],
        settings=SamplingSettings(temperature=0.0),
        batch_size=batch_size,
        stop_strings=prompts.stop_strings(style, stop_strings),
        chat_template=chat_template,
        progress=progress,
      )
      rows = score_generations(examples, [samples[0] for samples in completions], style)
      io.write_jsonl(out_dir / f"{task}.{style}.jsonl", rows)
      entry = accuracy_entry(rows)
      if style == prompts.COT and examples and examples[0].answer_type == NUMBER:
        entry["arithmetic"] = arithmetic.profile((r["generation"], r["correct"]) for r in rows)
      summary.setdefault(task, {})[style] = entry
  io.write_json(out_dir / "summary.json", summary)
  io.write_text(out_dir / "results.md", results_table(summary) + "\n")
  return summary


def results_table(summary: dict) -> str:
  styles = sorted({style for entry in summary.values() for style in entry})
  header = "| task | n | " + " | ".join(f"{s} accuracy (95% CI)" for s in styles) + " |"
  lines = [header, "|---|---:|" + "---:|" * len(styles)]
  for task, entry in summary.items():
    n = next(iter(entry.values()))["n"]
    cells = []
    for s in styles:
      if s in entry:
        e = entry[s]
        cells.append(f"{100 * e['accuracy']:.1f}% ({100 * e['ci95'][0]:.1f}–{100 * e['ci95'][1]:.1f})")
      else:
        cells.append("")
    lines.append(f"| {task} | {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def evaluation_examples(config) -> dict[str, list[Example]]:
  return {
    name: load_examples(
      name,
      config.split or get_task(name).eval_split,
      source=config.source,
      data_dir=config.data_dir or None,
      limit=config.limit or None,
      seed=config.seed,
    )
    for name in task_names(config.tasks)
  }


def run(config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
  from srit_jax import sharding
  from srit_jax.configs import checks
  from srit_jax.conversion import loading

  checks.check(config, "eval")
  examples = evaluation_examples(config)
  mesh = sharding.mesh_from_config(config.mesh)
  model = loading.load_model(
    config.model,
    mesh=mesh,
    dtype=config.dtype,
    param_dtype=config.dtype,  # evaluation trains nothing: no master weights
    attention=config.attention,
    progress=progress,
  )
  styles = [prompts.COT] + ([prompts.DIRECT] if config.direct else [])
  summary = evaluate(
    model,
    examples,
    workdir,
    styles=styles,
    max_new_tokens={prompts.COT: config.max_new_tokens, prompts.DIRECT: config.max_new_tokens_direct},
    batch_size=config.batch_size,
    chat_template=config.chat_template,
    stop_strings=tuple(config.stop_strings),
    progress=progress,
  )
  print(results_table(summary))
  return summary
