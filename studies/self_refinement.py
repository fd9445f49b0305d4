"""What self-refinement adds over instruction tuning: SFT vs. SRIT on the same questions, for
the base recipe and the recipes that matter, with paired statistics.

    python studies/self_refinement.py --root=runs/study            # every variant, then the report
    python studies/self_refinement.py --root=runs/study --variants=base,rpo
    python studies/self_refinement.py --root=runs/study --report_only
    python studies/self_refinement.py --root=runs/study --status       # where each variant stands

The base is `configs/wordmath.py` (SmolLM2-135M-Instruct taught 400 worked word problems,
then refined on its own samples of 200 training questions; 1,000 in-domain test questions and
500 per out-of-domain task). Every variant takes over, rather than runs, each phase another
variant here finished with the same inputs (the pipeline's `reuse_phases_from`, by the phase's
fingerprint), its files hard links that are never written through (appends make their own copy
first): the phases every variant shares (demonstrations, SFT and its evaluation), a control two
variants' settings make alike, and a refine round's samples and reference log-probs made from
the same model and settings. So a variant reruns only what it changes, and on a fresh machine
the first variant run makes the shared phases for the rest; neither the base nor the variant it
changes one thing of runs unless listed. Only the base evaluates the untuned student. Variants
run one after another under `nice`, in the order listed; a killed study resumes where it
stopped. The report (docs/self_refinement_study.md between its table markers, and
docs/self_refinement_study.json) pairs each variant's SRIT student with the SFT student, and
where a variant trains the compute-matched control, the control with both. The variants are
defined in studies/study_variants.py, the report is written by studies/study_report.py; this
script runs them.
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
# This checkout's srit_jax, ahead of any other one installed: the report imports it (some of it
# late, after hours of running), and the pipelines it starts run this checkout's too.
sys.path.insert(0, str(ROOT))

from study_report import report  # noqa: E402
from study_variants import CONFIG, VARIANTS  # noqa: E402

# Added to every variant but the base: the untuned student is the same in all, and the report
# pairs only SFT, SRIT and the control.
VARIANT_SETTINGS = ("eval_untuned=False",)

_ROOT_DIR = flags.DEFINE_string("root", "runs/study", "folder of the study's runs (one workdir per variant)")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), "variants to run, in order")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "write the report from finished variants; run nothing")
_STATUS = flags.DEFINE_bool("status", False, "where each variant stands (finished, queued, its phases); run nothing")
_DOC = flags.DEFINE_string("doc", str(ROOT / "docs" / "self_refinement_study.md"), "the report")
_KEEP_CHECKPOINTS = flags.DEFINE_bool(
  "keep_checkpoints", False, "keep a finished variant's training checkpoints (default: removed; exports stay)"
)
_OVERRIDES = flags.DEFINE_list(
  "overrides",
  [],
  "settings added to every variant's pipeline command after its own (a machine's batch sizes, say), "
  "e.g. eval.batch_size=256",
)


def drop_checkpoints(workdir: pathlib.Path) -> None:
  """A finished variant's training checkpoints: kept only to resume its phases, which later phases
  and variants read through exports (a variant's checkpoints take about 4 GB a training phase)."""
  from srit_jax.phases.phase import TRAINING_STATE

  # Training phases sit at the top of the workdir; one not finished keeps its state to resume.
  for marker in sorted(workdir.glob("*/DONE.json")):
    for folder in TRAINING_STATE:
      shutil.rmtree(marker.parent / folder, ignore_errors=True)


def pipeline_overrides(name: str, extra: tuple[str, ...] = ()) -> list[str]:
  """The variant's settings as the pipeline's command-line flags: its own, then `extra`."""
  own = VARIANTS[name].overrides + (() if name == "base" else VARIANT_SETTINGS)
  return [f"--config.{o}" for o in (*own, *extra)]


def command_line(command: str, name: str, workdir: pathlib.Path, extra: tuple[str, ...] = ()) -> list[str]:
  """`srit-jax COMMAND` on the variant's config and settings, in `workdir`."""
  return ["srit-jax", command, f"--config={ROOT / CONFIG}", *pipeline_overrides(name, extra), f"--workdir={workdir}"]


def queue_problems(root: pathlib.Path, names, extra: tuple[str, ...] = ()) -> list[str]:
  """Every problem of the queued variants' pipeline command lines, each naming its variant, so
  that a misspelt setting (a variant's, or one of --overrides) stops the study at launch rather
  than when that variant's turn comes. Parses the pipeline's flags in this process."""
  from srit_jax import cli

  return [
    f"[{name}] {p}"
    for name in names
    for p in cli.command_line_problems(command_line("pipeline", name, root / name, extra))
  ]


def print_status(root: pathlib.Path, names, extra: tuple[str, ...] = ()) -> None:
  """Where each variant stands: finished, queued, or its phases (`srit-jax status`)."""
  from srit_jax import cli

  for name in names:
    workdir = root / name
    if (workdir / "STUDY_DONE").exists() and (workdir / "results.json").exists():
      print(f"[{name}] finished")
    elif not workdir.exists():
      print(f"[{name}] queued")
    else:
      print(f"[{name}]")
      cli.main(command_line("status", name, workdir, extra))
    print(flush=True)


def run_variant(root: pathlib.Path, name: str, extra: tuple[str, ...] = (), keep_checkpoints: bool = False) -> None:
  """Runs the variant's pipeline: its own overrides, then `extra` (which win where both set a field).
  A finished variant's checkpoints are removed unless `keep_checkpoints`."""
  workdir = root / name
  overrides = pipeline_overrides(name, extra)
  # A finished variant whose definition has changed since runs again: the pipeline skips every
  # phase whose settings are unchanged and runs what is new (a control added, say). Markers
  # written before the overrides were recorded count as finished with today's.
  marker = workdir / "STUDY_DONE"
  done = json.loads(marker.read_text()) if marker.exists() else {}
  if (workdir / "results.json").exists() and done and done.get("overrides", overrides) == overrides:
    print(f"[{name}] done already")
    if not keep_checkpoints:
      drop_checkpoints(workdir)
    return
  # The pipeline runs this checkout's package, as the study itself does, whichever `srit-jax`
  # an editable install elsewhere would have put first on the PATH. The other variants' workdirs
  # (where phases of the same inputs are taken over) are a location, not one of its settings.
  pipeline = command_line("pipeline", name, workdir, extra)[1:]
  pipeline.insert(-1, f"--config.reuse_phases_from={root}")  # before --workdir, which stays last
  command = ["nice", "-n", "10", sys.executable, "-m", "srit_jax.cli", *pipeline]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
  print(f"[{name}] {' '.join(command)}", flush=True)
  start = time.time()
  subprocess.run(command, check=True, cwd=ROOT, env=env)
  seconds = done.get("seconds", 0.0) + time.time() - start  # a rerun adds its own time
  marker.write_text(json.dumps({"seconds": seconds, "overrides": overrides}) + "\n")
  if not keep_checkpoints:
    drop_checkpoints(workdir)


def main(argv):
  del argv
  # Read before anything parses the pipeline's flags in this process (which resets these).
  root, names, extra = pathlib.Path(_ROOT_DIR.value).resolve(), list(_VARIANTS.value), tuple(_OVERRIDES.value)
  doc, keep_checkpoints = pathlib.Path(_DOC.value), _KEEP_CHECKPOINTS.value
  root.mkdir(parents=True, exist_ok=True)
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; variants: {', '.join(VARIANTS)}")
  if _STATUS.value:
    print_status(root, names, extra)
    return
  if not _REPORT_ONLY.value:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    problems = queue_problems(root, names, extra)
    if problems:
      raise app.UsageError("the queue cannot run as given (nothing was started):\n" + "\n".join(problems))
    for name in names:
      run_variant(root, name, extra, keep_checkpoints)
      report(root, doc)
  report(root, doc)


if __name__ == "__main__":
  app.run(main)
