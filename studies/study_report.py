"""The self-refinement study's report: from each finished variant's results.json, the rule
table (each recipe held to the bar for a new default), every paired comparison (SRIT with SFT,
and where a variant trains the compute-matched control, the control with both), the rounds with
their held-out curves, the arithmetic profile of each stage's answers and the sampled answers'
pass@k; written between the table markers of docs/self_refinement_study.md and to
docs/self_refinement_study.json, where rows reported before stay while their run folders are gone.
"""

from __future__ import annotations

import json
import pathlib

from study_variants import VARIANTS, shared_settings
from study_verdicts import SIGNIFICANT, largest_gains_allowed, verdicts

from srit_jax import statistics
from srit_jax.tasks import arithmetic


def _percent(x: float) -> str:
  return f"{100 * x:.1f}"


def _with_interval(paired: dict) -> str:
  """A paired difference in points with its 95% interval: "+5.0 (+2.7, +7.4)"."""
  low, high = paired["ci95"]
  return f"{100 * paired['difference']:+.1f} ({100 * low:+.1f}, {100 * high:+.1f})"


def _row(variant: str, comparison: str, task: str, domain: str, paired: dict) -> str:
  detectable = paired.get("detectable_difference", float("inf"))
  return (
    f"| {variant} | {comparison} | {task} ({domain}) | {paired['n']} "
    f"| {_percent(paired['first_correct'] / paired['n'])} | {_percent(paired['second_correct'] / paired['n'])} "
    f"| {_with_interval(paired)} "
    f"| {paired['only_first_correct']} / {paired['only_second_correct']} | {paired['mcnemar_p']:.3f} "
    f"| {100 * detectable:.1f} |"
  )


COMPARISONS = (
  ("srit_vs_sft", "SRIT − SFT"),
  ("control_vs_sft", "control − SFT"),
  ("srit_vs_control", "SRIT − control"),
)


def _sampled_pairs_row(variant: str, comparison: str, task: str, domain: str, paired: dict) -> str:
  """pass@1 and pass@k of two stages' sampled answers, paired (`evaluate.paired_samples`)."""
  one, reached = paired["pass@1"], paired.get("pass@k")
  cells = [_with_interval(one), "—", "—", "—"]
  if reached:
    counts = f"{reached['only_first_correct']} / {reached['only_second_correct']}"
    cells[1:] = [_with_interval(reached), counts, f"{reached['mcnemar_p']:.3f}"]
  return f"| {variant} | {comparison} | {task} ({domain}) | {one['n']} | " + " | ".join(cells) + " |"


def _sampled_rows(name: str, variant: dict) -> list[str]:
  """Per task and stage (SFT, SRIT, control): pass@1, pass@k (k the answers sampled) and the
  majority vote's accuracy."""
  from srit_jax.phases.evaluate import headline_figures  # JAX's import: only where a report needs it

  rows = []
  for task, domain in variant["domains"].items():
    for stage, label in ARITHMETIC_STAGES:
      entry = variant["stages"].get(stage, {}).get(task, {}).get("cot", {}).get("sampled")
      if not entry:
        continue
      cells = [f"{_percent(v)} ({_percent(low)}–{_percent(high)})" for _, v, (low, high) in headline_figures(entry)]
      answers = f"{entry['samples']} ({entry['temperature']:g})"
      rows.append(
        f"| {name} | {task} ({domain}) | {label} | {entry['majority']['n']} | {answers} | " + " | ".join(cells) + " |"
      )
  return rows


def _steps(entry: dict) -> str:
  """A round's steps as run, "of" those planned where it stopped early."""
  planned = entry.get("planned_steps") or entry["steps"]
  return str(entry["steps"]) if entry["steps"] == planned else f"{entry['steps']} of {planned}"


def _rounds(results: dict) -> list[dict]:
  """Per round: pairs, steps, held-out reward accuracy and margin (first and kept step), and the
  greedy in-domain accuracy where the round was evaluated."""
  rows = []
  last = len(results.get("rounds", []))
  for number, entry in enumerate(results.get("rounds", []), start=1):
    stage = "srit" if number == last else f"srit_round_{number}"
    accuracy = {
      task: results["stages"][stage][task]["cot"]["accuracy"]
      for task, domain in results["domains"].items()
      if domain == "in-domain" and stage in results["stages"] and task in results["stages"][stage]
    }
    after = entry.get("heldout_after") or {}
    before = entry.get("heldout_before") or {}
    rows.append(
      {
        "round": number,
        "pairs": entry["pairs"],
        "steps": entry.get("steps_run") or entry.get("num_steps"),  # fewer than planned where it stopped early
        "planned_steps": entry.get("num_steps"),
        "selected_step": (entry.get("selected") or {}).get("step", entry.get("steps_run") or entry.get("num_steps")),
        "reference": (entry.get("reference") or {}).get("model"),
        "heldout_reward_accuracy": [before.get("eval/rewards/accuracies"), after.get("eval/rewards/accuracies")],
        "heldout_margin": [before.get("eval/rewards/margins"), after.get("eval/rewards/margins")],
        "heldout_curve": {  # step -> [reward accuracy, margin] at every held-out evaluation
          step: [values.get("eval/rewards/accuracies"), values.get("eval/rewards/margins")]
          for step, values in (entry.get("heldout_curve") or {}).items()
        },
        "in_domain_accuracy": accuracy,
      }
    )
  return rows


# A variant taught otherwise than the base (its own SFT: fewer demonstrations, or longer) has its
# SFT, SRIT and control students paired with the base's SFT student too, on the same questions:
# does self-refinement after fewer demonstrations reach SFT on all of them; does longer SFT give
# what the control gives?
BASE_SFT_COMPARISONS = (
  ("sft_vs_base_sft", "SFT − base SFT", "sft"),
  ("srit_vs_base_sft", "SRIT − base SFT", "srit"),
  ("control_vs_base_sft", "control − base SFT", "control"),
)


def _base_sft_evaluation(root: pathlib.Path) -> pathlib.Path | None:
  """The finished evaluation of the SFT student that every variant with the base's shared
  settings shares, from the first such variant here."""
  for name in VARIANTS:
    evaluation = root / name / "eval" / "sft"
    if not shared_settings(name) and (evaluation / "DONE.json").exists():
      return evaluation
  return None


def _paired_with(workdir: pathlib.Path, other: pathlib.Path, task: str, comparisons) -> dict:
  """The variant's stages paired with another evaluation (`other`) on `task`'s questions: for each
  (key, stage) of `comparisons` where both answered the same questions."""
  from srit_jax.phases.evaluate import per_question_outcomes  # JAX's import: only where a report needs it

  def outcomes(answers: pathlib.Path) -> dict[str, bool]:
    return per_question_outcomes(answers) if answers.exists() else {}

  first = outcomes(other / f"{task}.cot.jsonl")
  paired = {}
  for key, stage in comparisons:
    own = outcomes(workdir / "eval" / stage / f"{task}.cot.jsonl")
    if first and own.keys() == first.keys():
      paired[key] = statistics.paired_comparison(first, own)
  return paired


# A variant that changes one thing in another's recipe (`Variant.versus`) has its SRIT student
# paired with that variant's student on the same questions too.
VERSUS = "srit_vs_versus"


ARITHMETIC_STAGES = (("sft", "SFT"), ("srit", "SRIT"), ("control", "control"))


def _arithmetic(workdir: pathlib.Path, results: dict) -> dict:
  """{stage: {task: arithmetic profile}} of every evaluated stage: the evaluation's own, or (for
  an evaluation made before it recorded one) read again from its answers."""
  profiles = {}
  for stage, tasks in results["stages"].items():
    for task, entry in tasks.items():
      profile = entry.get("cot", {}).get("arithmetic")
      answers = workdir / "eval" / stage / f"{task}.cot.jsonl"
      if profile is None and answers.exists():
        rows = [json.loads(line) for line in answers.read_text().splitlines()]
        profile = arithmetic.profile((r["generation"], r["correct"]) for r in rows)
      if profile:
        profiles.setdefault(stage, {})[task] = profile
  return profiles


def _arithmetic_cell(profile: dict | None) -> str:
  if not profile:
    return "—"
  low, high = statistics.wilson_interval(profile["answers_with_slip"], profile["answers"])
  return (
    f"{_percent(profile['slip_share'])} ({_percent(low)}–{_percent(high)}) "
    f"/ {_percent(profile['accuracy_without_slip'])}"
  )


def learning_curves(summary: dict, path: pathlib.Path) -> None:
  """Held-out reward accuracy and margin over the DPO steps of every round of each variant, the
  kept step marked: what the preference training learned, beside the tables' greedy accuracy."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  # A diagnostic variant's rounds are its parent's.
  shown = [name for name in summary if not (name in VARIANTS and VARIANTS[name].diagnostic)]
  colors = plt.get_cmap("tab20").colors  # one a variant; its rounds told apart by line style
  point_markers = (".", "x", "+")  # past 20 variants the colours come round again, with other points
  round_styles = ("-", "--", ":", "-.")
  lines = sum(len(summary[name]["rounds"]) for name in shown)  # the legend's entries, one a line
  fig, axes = plt.subplots(1, 2, figsize=(12, max(4.0, 0.5 + 0.16 * lines)))  # tall enough for the legend
  for index, name in enumerate(shown):
    rounds = summary[name]["rounds"]
    for entry in rounds:
      label = name if len(rounds) == 1 else f"{name}, round {entry['round']}"
      if entry["reference"] is None:  # SimPO, ORPO: each side's mean log-prob, not its log-ratio to a reference
        label += " (rewards: β × mean log-prob)"
      style = dict(color=colors[index % len(colors)], linestyle=round_styles[(entry["round"] - 1) % len(round_styles)])
      curve = sorted((int(step), values) for step, values in entry["heldout_curve"].items())
      for ax, column in zip(axes, (0, 1)):
        points = [(step, values[column]) for step, values in curve if values[column] is not None]
        if not points:
          continue
        marker = point_markers[index // len(colors) % len(point_markers)]
        ax.plot(*zip(*points), label=label, marker=marker if len(points) < 30 else None, **style)
        kept = [p for p in points if p[0] == entry["selected_step"]]
        if kept:
          ax.plot(*kept[0], marker="o", markersize=8, fillstyle="none", color=style["color"])
  for ax, title in zip(axes, ("held-out reward accuracy", "held-out reward margin")):
    ax.set_title(f"{title} (circle: the kept step)", fontsize=9)
    ax.set_xlabel("DPO step")
  axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def report(root: pathlib.Path, doc: pathlib.Path) -> dict:
  """The study's tables from every finished variant. A variant reported before whose run folder
  is gone (a study resumed on another machine) keeps its rows from the report's json until it
  finishes again."""
  json_path = doc.with_suffix(".json")
  reported = json.loads(json_path.read_text()) if json_path.exists() else {}
  rows, round_rows, arithmetic_rows, sampled_rows, majority_rows, summary = [], [], [], [], [], {}
  sampled_pair_rows = []
  base_sft = _base_sft_evaluation(root)
  for name, variant in VARIANTS.items():
    results_path = root / name / "results.json"
    if (root / name / "STUDY_DONE").exists() and results_path.exists():
      results = json.loads(results_path.read_text())
      paired = results["paired"]
      if shared_settings(name) and base_sft is not None and not variant.diagnostic:
        base_comparisons = [(key, stage) for key, _, stage in BASE_SFT_COMPARISONS]
        paired = {
          task: {**entry, **_paired_with(root / name, base_sft, task, base_comparisons)}
          for task, entry in paired.items()
        }
      if variant.versus and (root / variant.versus[0] / "STUDY_DONE").exists():
        other = root / variant.versus[0] / "eval" / variant.versus[1]
        paired = {
          task: {**entry, **_paired_with(root / name, other, task, [(VERSUS, "srit")])}
          for task, entry in paired.items()
        }
      summary[name] = {
        "what": variant.what,
        "overrides": list(variant.overrides),
        "domains": results["domains"],
        "stages": results["stages"],
        "paired": paired,
        "pairs": results["pairs"],
        "rounds": _rounds(results),
        **({"sft": results["sft"]} if results.get("sft") else {}),  # its steps run and kept
        "arithmetic": _arithmetic(root / name, results),
        "seconds": json.loads((root / name / "STUDY_DONE").read_text())["seconds"],
        **({"paired_majority": results["paired_majority"]} if "paired_majority" in results else {}),
        **({"paired_sampled": results["paired_sampled"]} if "paired_sampled" in results else {}),
      }
    elif name in reported:
      summary[name] = reported[name]
    else:
      continue
    if variant.diagnostic:  # sampled answers of students the tables above hold: their own tables
      sampled_rows += _sampled_rows(name, summary[name])
      for key, label in COMPARISONS:
        for task, domain in summary[name]["domains"].items():
          if key in summary[name].get("paired_majority", {}).get(task, {}):
            majority_rows.append(_row(name, label, task, domain, summary[name]["paired_majority"][task][key]))
          if key in summary[name].get("paired_sampled", {}).get(task, {}):
            entry = summary[name]["paired_sampled"][task][key]
            sampled_pair_rows.append(_sampled_pairs_row(name, label, task, domain, entry))
      continue
    versus = ((VERSUS, f"SRIT − {variant.versus[2]}"),) if variant.versus else ()
    for key, label in (*COMPARISONS, *((key, label) for key, label, _ in BASE_SFT_COMPARISONS), *versus):
      for task, domain in summary[name]["domains"].items():
        if key in summary[name]["paired"][task]:
          rows.append(_row(name, label, task, domain, summary[name]["paired"][task][key]))
    profiles = summary[name].get("arithmetic", {})
    for task, domain in summary[name]["domains"].items():
      cells = [_arithmetic_cell(profiles.get(stage, {}).get(task)) for stage, _ in ARITHMETIC_STAGES]
      if any(cell != "—" for cell in cells):
        arithmetic_rows.append(f"| {name} | {task} ({domain}) | " + " | ".join(cells) + " |")
    for entry in summary[name]["rounds"]:
      accuracy = ", ".join(f"{task} {_percent(a)}" for task, a in entry["in_domain_accuracy"].items()) or "—"
      before, after = entry["heldout_reward_accuracy"]
      margin_before, margin_after = entry["heldout_margin"]
      fmt = lambda x: "—" if x is None else f"{x:.3f}"
      round_rows.append(
        f"| {name} | {entry['round']} | {entry['pairs']} | {_steps(entry)} | {entry['selected_step']} "
        f"| {fmt(before)} → {fmt(after)} | {fmt(margin_before)} → {fmt(margin_after)} | {accuracy} |"
      )
  json_path.write_text(json.dumps(summary, indent=2) + "\n")
  curves = doc.with_name(doc.stem + "_curves.png")
  learning_curves(summary, curves)
  table = [
    "Each recipe against the rule for a new default (each seed's figure, first / second; a gain"
    f" counts at McNemar p < {SIGNIFICANT}):",
    "",
    "| recipe (seeds) | SRIT − SFT in-domain | best out-of-domain SRIT − SFT | SRIT − control in-domain "
    "| meets the rule |",
    "|---|---:|---:|---:|---|",
    *verdicts(summary),
    "",
    largest_gains_allowed(summary),
    "",
    "| variant | comparison | task | n | first % | second % | difference, points (95% CI) "
    "| only first / only second right | McNemar p | detectable, points |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    *rows,
    "",
    "| variant | round | pairs | steps | kept step | held-out reward accuracy | held-out margin "
    "| greedy in-domain accuracy % |",
    "|---|---:|---:|---:|---:|---:|---:|---|",
    *round_rows,
    "",
    "Arithmetic: % of CoT answers with a wrong calculation step (95% interval) / accuracy % of the answers "
    "without one (srit_jax/tasks/arithmetic.py):",
    "",
    "| variant | task | " + " | ".join(label for _, label in ARITHMETIC_STAGES) + " |",
    "|---|---|" + "---:|" * len(ARITHMETIC_STAGES),
    *arithmetic_rows,
    *(
      [
        "",
        "Sampled answers (each question answered k times; pass@k by the unbiased estimator, % with 95% "
        "bootstrap intervals; the majority vote's accuracy with its Wilson interval):",
        "",
        "| variant | task | stage | n | answers (temperature) | pass@1 | pass@k | majority vote |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *sampled_rows,
        "",
        "The majority votes paired on the same questions:",
        "",
        "| variant | comparison | task | n | first % | second % | difference, points (95% CI) "
        "| only first / only second right | McNemar p | detectable, points |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *majority_rows,
        *(
          [
            "",
            "pass@1 (each question's share of right answers) and pass@k (any of its k answers right) paired on "
            "the same questions: points, 95% bootstrap interval; for pass@k the questions only one stage reaches "
            "and the exact McNemar test:",
            "",
            "| variant | comparison | task | n | pass@1 difference (95% CI) | pass@k difference (95% CI) "
            "| only first / only second reach | McNemar p |",
            "|---|---|---|---:|---:|---:|---:|---:|",
            *sampled_pair_rows,
          ]
          if sampled_pair_rows
          else []
        ),
      ]
      if sampled_rows
      else []
    ),
    "",
    f"![Held-out reward accuracy and margin over the DPO steps of each variant]({curves.name})",
  ]
  marker_start, marker_end = "<!-- study table -->", "<!-- end study table -->"
  text = doc.read_text() if doc.exists() else f"# Self-refinement study\n\n{marker_start}\n{marker_end}\n"
  before, _, rest = text.partition(marker_start)
  _, _, after = rest.partition(marker_end)
  doc.write_text(before + marker_start + "\n" + "\n".join(table) + "\n" + marker_end + after)
  print("\n".join(table))
  return summary
