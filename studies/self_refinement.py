"""What self-refinement adds over instruction tuning: SFT vs. SRIT on the same questions, for
the base recipe and the variants that matter, with paired statistics.

    python studies/self_refinement.py --root=runs/study            # every variant, then the report
    python studies/self_refinement.py --root=runs/study --variants=base,mixed
    python studies/self_refinement.py --root=runs/study --report_only

The base is `configs/wordmath.py` (SmolLM2-135M-Instruct taught 400 worked word problems,
then refined on its own samples of 200 training questions; 300 test questions per task).
Every variant starts from a hard-linked copy of the base's finished phases, so it shares the
base's demonstrations, SFT student, its evaluations and (where sampling is unchanged) the
student's samples; the pipeline reruns only what the variant changes. Variants run one after
another (under `nice`); a killed study resumes where it stopped. The report
(docs/self_refinement_study.md and docs/self_refinement_study.json) pairs each variant's
SRIT student with the SFT student on the same test questions.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).parents[1]
CONFIG = "configs/wordmath.py"

# name: (what it changes, config overrides)
VARIANTS = {
  "base": ("the base recipe: CoT over direct answers, beta 0.1, lr 5e-6, 20 steps", []),
  "correct_vs_incorrect": (
    "pairs: a correct CoT answer over an incorrect one",
    ["refine.strategy=correct_vs_incorrect"],
  ),
  "mixed": ("pairs: both kinds, the cap of 2 per question shared", ["refine.strategy=mixed"]),
  "lr_2e-5": ("4x the learning rate", ["refine.optimizer.learning_rate=2e-5"]),
  "nll_1": ("an NLL term on the chosen answers (weight 1)", ["refine.nll_weight=1.0"]),
  "beta_0.5": ("beta 0.5 (closer to the reference)", ["refine.beta=0.5"]),
  "no_fallback": ("no teacher demonstration where the student never succeeds", ["refine.teacher_fallback=False"]),
  "steps_60": ("3x the DPO steps", ["refine.num_steps=60", "refine.save_every=30"]),
  "two_rounds": ("a second round from the refined student (new samples, SFT reference)", ["refine_iterations=2"]),
  "demos_100": ("a quarter of the demonstrations (100): a weaker SFT student", ["demos.limit=100"]),
}
SHARED_PHASES = ("demos", "sft", "refine", "eval/untuned", "eval/sft")

_ROOT_DIR = flags.DEFINE_string("root", "runs/study", "folder of the study's runs (one workdir per variant)")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), "variants to run, in order")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "write the report from finished variants; run nothing")
_DOC = flags.DEFINE_string("doc", str(ROOT / "docs" / "self_refinement_study.md"), "the report")


def _start_from_base(root: pathlib.Path, name: str) -> pathlib.Path:
  """The variant's workdir, first filled with hard links to the base's finished phases."""
  workdir = root / name
  if name != "base" and not workdir.exists():
    partial = root / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    for phase in SHARED_PHASES:
      source = root / "base" / phase
      if (source / "DONE.json").exists():
        target = partial / phase
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(source), str(target)], check=True)
    partial.rename(workdir)
  return workdir


def run_variant(root: pathlib.Path, name: str) -> None:
  workdir = _start_from_base(root, name)
  if (workdir / "results.json").exists() and (workdir / "STUDY_DONE").exists():
    print(f"[{name}] done already")
    return
  overrides = [f"--config.{o}" for o in VARIANTS[name][1]]
  command = ["nice", "-n", "10", "srit-jax", "pipeline", f"--config={CONFIG}", *overrides, f"--workdir={workdir}"]
  print(f"[{name}] {' '.join(command)}", flush=True)
  start = time.time()
  subprocess.run(command, check=True, cwd=ROOT)
  (workdir / "STUDY_DONE").write_text(json.dumps({"seconds": time.time() - start}) + "\n")


def _percent(x: float) -> str:
  return f"{100 * x:.1f}"


def report(root: pathlib.Path, doc: pathlib.Path) -> dict:
  """The study's tables from every finished variant."""
  rows, summary = [], {}
  for name, (what, overrides) in VARIANTS.items():
    results_path = root / name / "results.json"
    if not (root / name / "STUDY_DONE").exists() or not results_path.exists():
      continue
    results = json.loads(results_path.read_text())
    refine_dirs = sorted((root / name).glob("refine*/DONE.json"))
    refine_summary = json.loads(refine_dirs[-1].read_text())["summary"]
    summary[name] = {
      "what": what,
      "overrides": overrides,
      "stages": results["stages"],
      "paired": results["paired"],
      "pairs": results["pairs"],
      "heldout_after": refine_summary.get("heldout_after"),
      "seconds": json.loads((root / name / "STUDY_DONE").read_text())["seconds"],
    }
    for task, domain in results["domains"].items():
      paired = results["paired"][task]["srit_vs_sft"]
      low, high = paired["ci95"]
      rows.append(
        f"| {name} | {task} ({domain}) | {paired['n']} | {_percent(paired['first_correct'] / paired['n'])} "
        f"| {_percent(paired['second_correct'] / paired['n'])} | {100 * paired['difference']:+.1f} "
        f"({100 * low:+.1f}, {100 * high:+.1f}) | {paired['only_first_correct']} / {paired['only_second_correct']} "
        f"| {paired['mcnemar_p']:.3f} |"
      )
  json_path = doc.with_suffix(".json")
  json_path.write_text(json.dumps(summary, indent=2) + "\n")
  table = [
    "| variant | task | n | SFT % | SRIT % | SRIT − SFT, points (95% CI) | only SFT / only SRIT right | McNemar p |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
    *rows,
  ]
  marker_start, marker_end = "<!-- study table -->", "<!-- end study table -->"
  text = doc.read_text() if doc.exists() else f"# Self-refinement study\n\n{marker_start}\n{marker_end}\n"
  before, _, rest = text.partition(marker_start)
  _, _, after = rest.partition(marker_end)
  doc.write_text(before + marker_start + "\n" + "\n".join(table) + "\n" + marker_end + after)
  print("\n".join(table))
  return summary


def main(argv):
  del argv
  root = pathlib.Path(_ROOT_DIR.value).resolve()
  root.mkdir(parents=True, exist_ok=True)
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; variants: {', '.join(VARIANTS)}")
  if not _REPORT_ONLY.value:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    for name in ["base", *(v for v in _VARIANTS.value if v != "base")]:
      run_variant(root, name)
      report(root, pathlib.Path(_DOC.value))
  report(root, pathlib.Path(_DOC.value))


if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))
  app.run(main)
