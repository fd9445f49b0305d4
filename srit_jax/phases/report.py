"""The pipeline's report: a Markdown table, an accuracy chart per task and stage (in-domain
and out-domain side by side, as in the paper's figures) and training curves."""

from __future__ import annotations

import json
import pathlib

STAGE_LABELS = {"untuned": "untuned student", "sft": "SFT (instruction-tuned)", "srit": "SRIT (self-refined)"}


def _cell(entry: dict | None) -> str:
  if not entry:
    return ""
  low, high = entry["ci95"]
  return f"{100 * entry['accuracy']:.1f} ({100 * low:.0f}–{100 * high:.0f})"


def results_markdown(results: dict) -> str:
  stages = list(results["stages"])
  lines = [
    f"Student {results['student']} ({results['student_family']}), teacher {results['teacher']} "
    f"({results['teacher_family']}, {results['family']}), trained on {results['train_task']}.",
    "",
    "CoT accuracy, % (95% Wilson interval), greedy decoding:",
    "",
    "| task | domain | n | " + " | ".join(STAGE_LABELS.get(s, s) for s in stages) + " |",
    "|---|---|---:|" + "---:|" * len(stages),
  ]
  for task, domain in results["domains"].items():
    entries = [results["stages"][s].get(task, {}).get("cot") for s in stages]
    n = next((e["n"] for e in entries if e), 0)
    lines.append(f"| {task} | {domain} | {n} | " + " | ".join(_cell(e) for e in entries) + " |")
  direct = [
    (task, s, results["stages"][s][task]["direct"])
    for task in results["domains"]
    for s in stages
    if "direct" in results["stages"][s].get(task, {})
  ]
  if direct:
    lines += ["", "Direct-answer accuracy, %:", ""]
    lines += [f"- {task}, {STAGE_LABELS.get(s, s)}: {_cell(e)}" for task, s, e in direct]
  pairs = results.get("pairs")
  if pairs:
    lines += [
      "",
      f"Self-refinement pairs ({pairs['strategy']}): {pairs['pairs']} from {pairs['questions']} questions "
      f"({pairs['questions_with_correct_cot']} with a correct CoT sample; {pairs['pairs_teacher_chosen']} "
      f"with the teacher's demonstration as chosen).",
    ]
  return "\n".join(lines)


def accuracy_chart(results: dict, path: str | pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  stages = list(results["stages"])
  domains = [d for d in ("in-domain", "out-domain") if d in results["domains"].values()]
  fig, axes = plt.subplots(1, len(domains), figsize=(5 * len(domains), 3.8), squeeze=False)
  width = 0.8 / len(stages)
  for ax, domain in zip(axes[0], domains):
    tasks = [t for t, d in results["domains"].items() if d == domain]
    for i, stage in enumerate(stages):
      entries = [results["stages"][stage].get(t, {}).get("cot") for t in tasks]
      values = [100 * e["accuracy"] if e else 0 for e in entries]
      errors = [
        [100 * (e["accuracy"] - e["ci95"][0]) if e else 0 for e in entries],
        [100 * (e["ci95"][1] - e["accuracy"]) if e else 0 for e in entries],
      ]
      positions = [j + (i - (len(stages) - 1) / 2) * width for j in range(len(tasks))]
      ax.bar(positions, values, width, yerr=errors, capsize=3, label=STAGE_LABELS.get(stage, stage))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 100)
    ax.set_ylabel("CoT accuracy (%)")
    ax.set_title(domain)
  axes[0][0].legend(fontsize=8, loc="upper left")
  fig.suptitle(f"{results['student']} taught by {results['teacher']} ({results['family']})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def training_curves(metric_files: dict[str, pathlib.Path], path: str | pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  panels = [
    ("sft", "loss", "SFT loss"),
    ("dpo", "loss", "DPO loss"),
    ("dpo", "rewards/accuracies", "DPO reward accuracy (train)"),
    ("dpo", "eval/rewards/accuracies", "DPO reward accuracy (held out)"),
  ]
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
  for ax, (phase, key, title) in zip(axes, panels):
    file = pathlib.Path(metric_files.get(phase, ""))
    rows = [json.loads(line) for line in file.read_text().splitlines()] if file.is_file() else []
    points = [(r["step"], r[key]) for r in rows if key in r]
    if points:
      ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
