"""The self-refinement study's rule for a new default, applied: each recipe's comparisons against
it (a row of the report's first table, its second seed beside it) and the largest gain the 95%
intervals allow over every recipe run. Read by studies/study_report.py.
"""

from __future__ import annotations

from study_variants import VARIANTS

# The rule for a new default (docs/self_refinement_study.md): a recipe becomes the default only
# where, on each of two sampling seeds, SRIT beats SFT on every in-domain task and on at least
# one out-of-domain task, and beats its compute-matched control on every in-domain task — each a
# positive difference with McNemar p < 0.05.
SIGNIFICANT = 0.05


def _gain(paired: dict | None) -> bool:
  return paired is not None and paired["difference"] > 0 and paired["mcnemar_p"] < SIGNIFICANT


def _difference(paired: dict | None) -> str:
  if paired is None:
    return "—"
  p = paired["mcnemar_p"]
  return f"{100 * paired['difference']:+.1f} ({'p < 0.001' if p < 0.001 else f'p {p:.3f}'})"


def _verdict_of_one_seed(variant: dict) -> tuple[list[str], list[str]]:
  """(cells, what fails) of one finished variant against the rule: SRIT − SFT in-domain, the
  best out-of-domain SRIT − SFT, SRIT − control in-domain."""
  tasks = variant["domains"].items()
  in_domain = [variant["paired"][t] for t, d in tasks if d == "in-domain"]
  out_domain = {t: variant["paired"][t].get("srit_vs_sft") for t, d in tasks if d != "in-domain"}
  best_out = max((t for t in out_domain if out_domain[t]), key=lambda t: out_domain[t]["difference"], default=None)
  fails = []
  if not all(_gain(p.get("srit_vs_sft")) for p in in_domain):
    fails.append("no in-domain gain over SFT")
  if not any(_gain(p) for p in out_domain.values()):
    fails.append("no out-of-domain gain over SFT")
  if not any("srit_vs_control" in p for p in in_domain):
    fails.append("no control run")
  elif not all(_gain(p.get("srit_vs_control")) for p in in_domain):
    fails.append("not above its control")
  cells = [
    "; ".join(_difference(p.get("srit_vs_sft")) for p in in_domain),
    f"{best_out} {_difference(out_domain[best_out])}" if best_out else "—",
    "; ".join(_difference(p.get("srit_vs_control")) for p in in_domain),
  ]
  return cells, fails


def verdicts(summary: dict) -> list[str]:
  """A table row per recipe reported (its second seed beside it): each comparison of the rule
  for a new default, and whether the recipe meets it."""
  rows = []
  for name, variant in summary.items():
    definition = VARIANTS.get(name)
    if definition is None or definition.second_seed_of or definition.replaced_by in summary or definition.diagnostic:
      continue
    if not any("srit_vs_sft" in paired for paired in variant["paired"].values()):
      continue
    runs = [variant]
    second = next((n for n, v in VARIANTS.items() if v.second_seed_of == name), None)
    if second in summary:
      runs.append(summary[second])
    verdicts_by_seed = [_verdict_of_one_seed(run) for run in runs]
    cells = [" / ".join(column) for column in zip(*(cells for cells, _ in verdicts_by_seed))]
    first_fails = verdicts_by_seed[0][1]
    if len(runs) == 1:
      second_fails = ["queued" if second else "not defined"]
    else:
      second_fails = [fail for fail in verdicts_by_seed[1][1] if fail not in first_fails]
    parts = ([", ".join(first_fails)] if first_fails else []) + (
      ["second seed: " + ", ".join(second_fails)] if second_fails else []
    )
    verdict = "no: " + "; ".join(parts) if parts else "yes"
    seeds = name if len(runs) == 1 else f"{name} / {second}"
    rows.append(f"| {seeds} | " + " | ".join(cells) + f" | {verdict} |")
  return rows


def largest_gains_allowed(summary: dict) -> str:
  """The largest gain that the 95% intervals allow over every recipe and seed reported, for each
  comparison of the rule (the upper end of the interval, where it lies highest): what the study
  rules out, whichever recipes fall short of the rule."""
  found = {}  # comparison -> (upper end, where)
  for name, variant in summary.items():
    definition = VARIANTS.get(name)
    if definition is None or definition.diagnostic or definition.replaced_by in summary:
      continue
    for task, domain in variant["domains"].items():
      for key, label in (("srit_vs_sft", "SRIT − SFT"), ("srit_vs_control", "SRIT − control")):
        paired = variant["paired"][task].get(key)
        if paired is None or (key == "srit_vs_control" and domain != "in-domain"):
          continue
        comparison = f"{label} {'in-domain' if domain == 'in-domain' else 'out of domain'}"
        where = name if domain == "in-domain" else f"{name}, {task}"
        if comparison not in found or paired["ci95"][1] > found[comparison][0]:
          found[comparison] = (paired["ci95"][1], where)
  if not found:
    return ""
  parts = [f"{comparison} {100 * high:+.1f} points ({where})" for comparison, (high, where) in found.items()]
  return "The largest gain the 95% intervals allow, over every recipe and seed reported: " + "; ".join(parts) + "."
