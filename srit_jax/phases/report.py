"""The pipeline's report: a Markdown table, an accuracy chart per task and stage (in-domain
and out-domain side by side, as in the paper's figures) and training curves."""

from __future__ import annotations

import json
import pathlib
from io import BytesIO

from srit_jax import io
from srit_jax.phases.evaluate import headline_figures

STAGE_LABELS = {
  "untuned": "untuned student",
  "sft": "SFT (instruction-tuned)",
  "srit": "SRIT (self-refined)",
  "control": "control (CE on the chosen answers)",
}


def stage_label(stage: str) -> str:
  if stage.startswith("srit_round_"):
    return f"SRIT after round {stage.removeprefix('srit_round_')}"
  return STAGE_LABELS.get(stage, stage)


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
    "| task | domain | n | " + " | ".join(stage_label(s) for s in stages) + " |",
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
    lines += [f"- {task}, {stage_label(s)}: {_cell(e)}" for task, s, e in direct]
  lines += arithmetic_markdown(results)
  lines += sampled_markdown(results)
  lines += paired_markdown(results)
  lines += paired_markdown(results, "paired_majority")
  lines += paired_sampled_markdown(results)
  sft = results.get("sft") or {}
  if sft.get("selected_step", sft.get("steps_run")) != sft.get("steps_run"):
    lines += ["", f"SFT kept step {sft['selected_step']} of the {sft['steps_run']} it ran (its lowest held-out loss)."]
  pairs = results.get("pairs")
  if pairs:
    lines += [
      "",
      f"Self-refinement pairs ({pairs['strategy']}): {pairs['pairs']} from {pairs['questions']} questions "
      f"({pairs['questions_with_correct_cot']} with a correct CoT sample; {pairs['pairs_teacher_chosen']} "
      f"with the teacher's demonstration as chosen).",
    ]
  return "\n".join(lines)


def arithmetic_markdown(results: dict) -> list[str]:
  """Per numeric task and stage: the share of CoT answers with a wrong arithmetic step, and the
  accuracy of the answers without one."""
  stages = list(results["stages"])
  rows = []
  for task, domain in results["domains"].items():
    entries = [results["stages"][s].get(task, {}).get("cot", {}).get("arithmetic") for s in stages]
    if any(entries):
      cells = [f"{100 * e['slip_share']:.1f} / {100 * e['accuracy_without_slip']:.1f}" if e else "" for e in entries]
      rows.append(f"| {task} | {domain} | " + " | ".join(cells) + " |")
  if not rows:
    return []
  return [
    "",
    "Arithmetic: % of CoT answers with a wrong calculation step / accuracy % of the answers without one:",
    "",
    "| task | domain | " + " | ".join(stage_label(s) for s in stages) + " |",
    "|---|---|" + "---:|" * len(stages),
    *rows,
  ]


def _points(value: float) -> str:
  return f"{100 * value:+.1f}"


def sampled_markdown(results: dict) -> list[str]:
  """Per task and stage, of the CoT answers sampled per question: pass@1, pass@k (k the count)
  and the majority vote's accuracy."""
  stages = list(results["stages"])
  rows, described = [], None
  for task, domain in results["domains"].items():
    entries = [results["stages"][s].get(task, {}).get("cot", {}).get("sampled") for s in stages]
    if not any(entries):
      continue
    described = described or next(e for e in entries if e)
    cells = [" / ".join(f"{100 * v:.1f}" for _, v, _ in headline_figures(e)) if e else "" for e in entries]
    rows.append(f"| {task} | {domain} | " + " | ".join(cells) + " |")
  if not rows:
    return []
  k = described["samples"]
  return [
    "",
    f"{k} CoT answers sampled a question (temperature {described['temperature']:g}, top-p {described['top_p']:g}): "
    f"pass@1 / pass@{k} / majority-vote accuracy, %:",
    "",
    "| task | domain | " + " | ".join(stage_label(s) for s in stages) + " |",
    "|---|---|" + "---:|" * len(stages),
    *rows,
  ]


def paired_markdown(results: dict, which: str = "paired") -> list[str]:
  """Paired tables (same questions): SRIT against SFT, and SFT against the untuned student, with a
  plain verdict on whether self-refinement's difference is significant; of "paired_majority",
  the same for the majority votes of the sampled answers (without the verdict, which is the
  greedy answers')."""
  paired = results.get(which)
  if not paired:
    return []
  measure = "CoT accuracy points" if which == "paired" else "majority-vote accuracy points of the sampled answers"
  lines = []
  for key, first, second in _comparisons(paired):
    lines += [
      "",
      f"{second} − {first}, paired on the same questions ({measure}, 95% bootstrap interval; exact McNemar test):",
      "",
      f"| task | domain | n | {second} − {first} | {first} right, {second} wrong | {second} right, {first} wrong "
      "| McNemar p |",
      "|---|---|---:|---:|---:|---:|---:|",
    ]
    for task, domain in results["domains"].items():
      if key not in paired[task]:
        continue
      c = paired[task][key]
      lines.append(
        f"| {task} | {domain} | {c['n']} | {_difference(c)} "
        f"| {c['only_first_correct']} | {c['only_second_correct']} | {c['mcnemar_p']:.3g} |"
      )
  if which != "paired":
    return lines
  significant = [t for t in results["domains"] if paired[t]["srit_vs_sft"]["mcnemar_p"] < 0.05]
  better = [t for t in significant if paired[t]["srit_vs_sft"]["difference"] > 0]
  worse = [t for t in significant if paired[t]["srit_vs_sft"]["difference"] < 0]
  unresolved = [t for t in results["domains"] if not paired[t]["srit_vs_sft"]["resolves_5_points"]]
  verdict = (
    f"SRIT beats SFT significantly (p < 0.05) on {', '.join(better)}"
    if better
    else "SRIT does not beat SFT significantly (p < 0.05) on any task"
  )
  if worse:
    verdict += f"; it is significantly worse on {', '.join(worse)}"
  lines += ["", verdict + "."]
  if unresolved:
    lines.append(
      f"n is too small to resolve a 5-point difference (it could not reach p < 0.05 with this many "
      f"questions and disagreements) on {', '.join(unresolved)}."
    )
  return lines


def _comparisons(paired: dict) -> list[tuple[str, str, str]]:
  """(key, first stage's label, second's) of each comparison that `paired` holds, in the tables' order."""
  keys = {key for task in paired.values() for key in task}
  tables = [("srit_vs_sft", "SFT", "SRIT"), ("sft_vs_untuned", "untuned", "SFT")]
  tables += [("srit_vs_control", "control", "SRIT"), ("control_vs_sft", "SFT", "control")]
  tables += [
    (key, "SFT", stage_label(key.removesuffix("_vs_sft"))) for key in sorted(keys) if key.startswith("srit_round_")
  ]
  return [(key, first, second) for key, first, second in tables if key in keys]


def paired_sampled_markdown(results: dict) -> list[str]:
  """Of the sampled answers, each comparison's pass@1 (how often a question is answered right) and
  pass@k (whether it is answered right at all in k tries) paired on the same questions: whether a
  stage answers more often what the other could already answer, or answers other questions."""
  paired = results.get("paired_sampled")
  if not paired:
    return []
  lines = []
  for key, first, second in _comparisons(paired):
    entries = [(task, domain, paired[task][key]) for task, domain in results["domains"].items() if key in paired[task]]
    k = next((e["pass@k"]["k"] for _, _, e in entries if "pass@k" in e), None)
    lines += [
      "",
      f"{second} − {first}, sampled answers paired on the same questions (points, 95% bootstrap interval; "
      f"pass@{k or 'k'}: exact McNemar test):",
      "",
      f"| task | domain | n | pass@1 | pass@{k or 'k'} | only {first} reaches | only {second} reaches | McNemar p |",
      "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for task, domain, entry in entries:
      one, reached = entry["pass@1"], entry.get("pass@k")
      cells = [_difference(one), "—", "—", "—", "—"]
      if reached:
        only_first, only_second = reached["only_first_correct"], reached["only_second_correct"]
        cells[1:] = [_difference(reached), str(only_first), str(only_second), f"{reached['mcnemar_p']:.3g}"]
      lines.append(f"| {task} | {domain} | {one['n']} | " + " | ".join(cells) + " |")
  return lines


def _difference(entry: dict) -> str:
  low, high = entry["ci95"]
  return f"{_points(entry['difference'])} ({_points(low)} to {_points(high)})"


def accuracy_chart(results: dict, path: str | pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  stages = list(results["stages"])
  domains = [d for d in ("in-domain", "out-domain") if d in results["domains"].values()]
  paired = results.get("paired")
  panels = len(domains) + (1 if paired else 0)
  fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8), squeeze=False)
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
      ax.bar(positions, values, width, yerr=errors, capsize=3, label=stage_label(stage))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(0, 100)
    ax.set_ylabel("CoT accuracy (%)")
    ax.set_title(domain)
  axes[0][0].legend(fontsize=8, loc="upper left")
  if paired:
    ax = axes[0][-1]
    tasks = list(results["domains"])
    comparisons = [paired[t]["srit_vs_sft"] for t in tasks]
    values = [100 * c["difference"] for c in comparisons]
    errors = [
      [100 * (c["difference"] - c["ci95"][0]) for c in comparisons],
      [100 * (c["ci95"][1] - c["difference"]) for c in comparisons],
    ]
    colors = ["tab:green" if c["mcnemar_p"] < 0.05 and c["difference"] > 0 else "tab:gray" for c in comparisons]
    ax.bar(range(len(tasks)), values, 0.6, yerr=errors, capsize=3, color=colors)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, fontsize=8)
    ax.set_ylabel("SRIT − SFT (points)")
    ax.set_title("self-refinement's difference, paired (95% CI)")
  fig.suptitle(f"{results['student']} taught by {results['teacher']} ({results['family']})", fontsize=10)
  fig.tight_layout()
  _save(fig, path, dpi=120)
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
  curves = []
  for phase, key, title in panels:
    file = io.as_path(metric_files.get(phase, ""))
    rows = [json.loads(line) for line in file.read_text().splitlines()] if file.is_file() else []
    points = [(r["step"], r[key]) for r in rows if key in r]
    if points:  # a panel only for what was measured
      curves.append((title, points))
  fig, axes = plt.subplots(1, max(len(curves), 1), figsize=(4 * max(len(curves), 1), 3), squeeze=False)
  for ax, (title, points) in zip(axes[0], curves):
    ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
  fig.tight_layout()
  _save(fig, path, dpi=110)
  plt.close(fig)


def _save(fig, path, dpi: int) -> None:
  """A figure as PNG, written whole (a local file or an object)."""
  png = BytesIO()
  fig.savefig(png, format="png", dpi=dpi)
  io.write_bytes(path, png.getvalue())
