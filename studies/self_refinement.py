"""What self-refinement adds over instruction tuning: SFT vs. SRIT on the same questions, for
the base recipe and the recipes that matter, with paired statistics.

    python studies/self_refinement.py --root=runs/study            # every variant, then the report
    python studies/self_refinement.py --root=runs/study --variants=base,rpo
    python studies/self_refinement.py --root=runs/study --report_only
    python studies/self_refinement.py --root=runs/study --status       # where each variant stands

The base is `configs/wordmath.py` (SmolLM2-135M-Instruct taught 400 worked word problems,
then refined on its own samples of 200 training questions; 1,000 in-domain test questions and
500 per out-of-domain task). Every variant starts from hard links to the finished phases of its
parent (the base, or the variant whose samples it shares), so it reruns only what it changes;
a linked file is never written through (appends make their own copy first). Where the parent has
not finished here (its rows may be reported from another machine), the variant starts from the
nearest finished ancestor, and takes the phases every variant shares (demonstrations, SFT and
its evaluation) from any other variant here that made them with the same settings: on a fresh
machine the first variant run makes them for the rest, and neither the base nor a parent runs
unless listed. Only the base evaluates the untuned student. Variants run one after another
under `nice`, in the order listed; a killed study resumes where it stopped. The report
(docs/self_refinement_study.md between its table markers, and docs/self_refinement_study.json)
pairs each variant's SRIT student with the SFT student, and where a variant trains the
compute-matched control, the control with both.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

from absl import app, flags

from srit_jax import statistics
from srit_jax.tasks import arithmetic

ROOT = pathlib.Path(__file__).parents[1]
CONFIG = "configs/wordmath.py"

# Iterative reasoning preference optimisation (Pang et al., 2024): a correct chain over an
# incorrect one, an NLL term on the chosen chain, more chains and pairs per question, epochs over
# the pairs, and the evaluated step of lowest held-out loss kept (as the paper keeps its lowest
# validation loss).
RPO = [
  "refine.strategy=correct_vs_incorrect",
  "refine.nll_weight=1.0",
  "refine.num_cot_samples=8",
  "refine.num_direct_samples=0",
  "refine.max_pairs_per_question=8",
  "refine.num_epochs=2",
  "refine.eval_every=25",
  "refine.save_every=25",
  "refine.select_checkpoint=best_heldout",
]


# Rounds that end once 4 held-out evaluations (100 steps) have not lowered the held-out loss: the
# step kept is the one a full run keeps unless its loss would have reached a new low later (rpo
# kept step 125 of 276, its control step 25).
STOP_EARLY = ("refine.early_stopping_patience=4",)

# The paper's pairs (a correct CoT answer over a direct one, the teacher's demonstration as the
# chosen answer where the student has no correct chain) with the same NLL term, pair cap, epochs
# and checkpoint choice.
COT_VS_DIRECT_NLL = tuple(o for o in RPO if "strategy" not in o and "num_cot" not in o and "num_direct" not in o)

# cot_vs_direct_nll after SFT on 100 demonstrations, its control's last step exported: after
# that SFT the control's held-out loss (the chosen answers' NLL) was flat, lowest at step 0 by
# 7e-6, so best_heldout exported the SFT student as the control. The last step matches it to SRIT
# (whose last step was its best) in steps kept as well as run.
DEMOS_100_LAST_CONTROL = (*COT_VS_DIRECT_NLL, "control=True", "demos.limit=100", "control_select_checkpoint=last")


# Instruction tuning run longer, its step chosen by held-out loss: up to 200 SFT steps (4x the
# base's 50) on the base's 400 demonstrations, evaluated every 10 on the teacher's solutions of
# the next 40 training questions (which never train), the lowest held-out loss kept, stopping
# once 5 evaluations (50 steps) have not lowered it. Every control gains 6-7 points in-domain
# over the base's SFT student: is that what more instruction tuning gives anyway?
SFT_BEST_HELDOUT = (
  "sft.num_steps=200",
  "demos.heldout_questions=40",
  "sft.eval_every=10",
  "sft.select_checkpoint=best_heldout",
  "sft.early_stopping_patience=5",
)


@dataclasses.dataclass(frozen=True)
class Variant:
  what: str
  overrides: tuple[str, ...] = ()
  parent: str = "base"  # whose finished phases it starts from
  second_seed_of: str = ""  # the variant it draws again with another sampling seed
  replaced_by: str = ""  # a rerun that stands for it in the recipes' verdicts (a control redone)
  diagnostic: bool = False  # its parent's students evaluated again (sampled answers): its own table, no verdict


VARIANTS = {
  "base": Variant("the base recipe: CoT over direct answers, beta 0.1, lr 5e-6, 20 steps of 8 pairs"),
  "rpo": Variant(
    "correct over incorrect chains + NLL (weight 1), 8 chains and up to 8 pairs per question, 2 epochs, "
    "lowest held-out loss kept; with the compute-matched control",
    (*RPO, "control=True"),
  ),
  "cot_vs_direct_nll": Variant(
    "the paper's pairs (CoT over direct) + NLL (weight 1), up to 8 pairs per question, 2 epochs, lowest held-out "
    "loss; with the compute-matched control",
    (*COT_VS_DIRECT_NLL, "control=True"),
  ),
  "cot_vs_direct_nll_seed_1": Variant(
    "cot_vs_direct_nll with another sampling and shuffling seed",
    (*COT_VS_DIRECT_NLL, "control=True", "refine.sampling_seed=1"),
    second_seed_of="cot_vs_direct_nll",
  ),
  "slip_corrected_nll": Variant(
    "pairs aimed at the calculation that went wrong: a wrong CoT answer over the student's own continuation from "
    "its first wrong step set right (reaching gold), + NLL (weight 1), up to 8 pairs per question, 2 epochs, lowest "
    "held-out loss; with the compute-matched control",
    (*COT_VS_DIRECT_NLL, "refine.strategy=slip_corrected", "control=True"),
    parent="cot_vs_direct_nll",
  ),
  "cot_vs_direct_nll_demos_100": Variant(
    "cot_vs_direct_nll after SFT on a quarter of the demonstrations (100)",
    (*COT_VS_DIRECT_NLL, "control=True", "demos.limit=100"),
    replaced_by="cot_vs_direct_nll_demos_100_last_control",
  ),
  "cot_vs_direct_nll_demos_100_last_control": Variant(  # only the control and its evaluation rerun
    "cot_vs_direct_nll_demos_100 with the control's last step exported (its held-out loss kept step 0)",
    DEMOS_100_LAST_CONTROL,
    parent="cot_vs_direct_nll_demos_100",
  ),
  "cot_vs_direct_nll_demos_100_seed_1": Variant(
    "cot_vs_direct_nll_demos_100_last_control with another sampling and shuffling seed",
    (*DEMOS_100_LAST_CONTROL, "refine.sampling_seed=1"),
    parent="cot_vs_direct_nll_demos_100_last_control",
    second_seed_of="cot_vs_direct_nll_demos_100_last_control",
  ),
  "cot_vs_direct_nll_new_questions": Variant(
    "cot_vs_direct_nll on 400 more training questions that no demonstration answers (600 in all)",
    (*COT_VS_DIRECT_NLL, "control=True", "refine.new_questions=400"),
    parent="cot_vs_direct_nll",
  ),
  "cot_vs_direct_nll_new_questions_seed_1": Variant(
    "cot_vs_direct_nll_new_questions with another sampling and shuffling seed (on cot_vs_direct_nll_seed_1's samples)",
    (*COT_VS_DIRECT_NLL, "control=True", "refine.new_questions=400", "refine.sampling_seed=1"),
    parent="cot_vs_direct_nll_seed_1",
    second_seed_of="cot_vs_direct_nll_new_questions",
  ),
  "slip_corrected_nll_seed_1": Variant(
    "slip_corrected_nll with another sampling and shuffling seed (on cot_vs_direct_nll_seed_1's samples)",
    (*COT_VS_DIRECT_NLL, "refine.strategy=slip_corrected", "control=True", "refine.sampling_seed=1"),
    parent="cot_vs_direct_nll_seed_1",
    second_seed_of="slip_corrected_nll",
  ),
  # Under Adam, which is nearly indifferent to the loss's scale, DPO + 10 x NLL trains as
  # 0.1 x DPO + NLL: the preference at a tenth of the weight it has in cot_vs_direct_nll, between
  # it (1) and the control (0), on the same pairs and steps as cot_vs_direct_nll_seed_1.
  "cot_vs_direct_nll_10_seed_1": Variant(
    "cot_vs_direct_nll_seed_1 with the NLL term at weight 10 (the preference at a tenth of the NLL term's weight); "
    "with the compute-matched control",
    (
      *(o for o in COT_VS_DIRECT_NLL if "nll_weight" not in o),
      "refine.nll_weight=10.0",
      "control=True",
      "refine.sampling_seed=1",
    ),
    parent="cot_vs_direct_nll_seed_1",
  ),
  "lora": Variant(
    "the base recipe with LoRA (rank 16 on every projection) in SFT and DPO",
    ("sft.lora.rank=16", "sft.optimizer.learning_rate=1e-3", "refine.optimizer.learning_rate=5e-5"),
  ),
  "rpo_3_rounds": Variant(
    "rpo iterated: 3 rounds, each sampling from the last round's student, which is its reference; with the "
    "compute-matched control iterated alike (each round cross-entropy on its own correct chains); each round "
    "of either stops once 4 held-out evaluations (100 steps) have not lowered its held-out loss",
    (*RPO, *STOP_EARLY, "refine_iterations=3", "refine_reference=previous", "eval_rounds=True", "control=True"),
    parent="rpo",
  ),
  "rpo_3_rounds_sft_reference": Variant(
    "rpo iterated: 3 rounds, the reference fixed at the SFT student; stopping early as rpo_3_rounds",
    (*RPO, *STOP_EARLY, "refine_iterations=3", "refine_reference=sft", "eval_rounds=True"),
    parent="rpo_3_rounds",
  ),
  "sft_best_heldout": Variant(
    "cot_vs_direct_nll with its control after SFT run up to 200 steps on the same 400 demonstrations, the step of "
    "lowest held-out loss kept (on the solutions of 40 more training questions, evaluated every 10 steps, stopping "
    "after 5 evaluations without a new low)",
    (*SFT_BEST_HELDOUT, *COT_VS_DIRECT_NLL, "control=True"),
    parent="cot_vs_direct_nll",
  ),
  "cot_vs_direct_orpo": Variant(
    "cot_vs_direct_nll's pairs, steps and NLL term with ORPO's reference-free odds-ratio term (weight 0.1, as in "
    "ORPO) in place of DPO's; with the compute-matched control",
    (*COT_VS_DIRECT_NLL, "refine.loss_type=orpo", "refine.beta=0.1", "control=True"),
    parent="cot_vs_direct_nll",
  ),
  "cot_vs_direct_nll_sampled": Variant(
    "cot_vs_direct_nll's SFT, SRIT and control students answering the first 300 in-domain test questions 8 times "
    "each by sampling (temperature 0.7): pass@1, pass@8 and the majority vote, the votes paired; does the "
    "preference narrow what the student can reach (pass@8) where the control's cross-entropy does not?",
    (*COT_VS_DIRECT_NLL, "control=True", "eval.limit=300", "eval.sampled_answers=8", "out_domain_tasks="),
    parent="cot_vs_direct_nll",
    diagnostic=True,
  ),
  "rpo_new_questions": Variant(
    "rpo on 400 more training questions that no demonstration answers (600 in all)",
    (*RPO, "refine.new_questions=400"),
    parent="rpo",
  ),
  "rpo_demos_100": Variant("rpo after SFT on a quarter of the demonstrations (100)", (*RPO, "demos.limit=100")),
  "correct_vs_incorrect": Variant(
    "pairs: a correct CoT answer over an incorrect one (20 steps)", ("refine.strategy=correct_vs_incorrect",)
  ),
  "rpo_seed_1": Variant(
    "rpo with another sampling and shuffling seed, with its control",
    (*RPO, "control=True", "refine.sampling_seed=1"),
    second_seed_of="rpo",
  ),
}
# Phases a variant may share with its parent; the pipeline reruns those whose settings differ.
SHARED_PHASES = ("demos", "sft", "eval/untuned", "eval/sft")
SHARED_PREFIXES = ("refine",)  # refine, refine_2, refine_control, ...
# The settings SHARED_PHASES depend on: variants that override none of them differently share
# those phases whichever ran first.
SHARED_SETTINGS = ("student", "seed=", "train_task", "in_domain_tasks", "out_domain_tasks", "demos.", "sft.", "eval.")
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


def _finished_phases(workdir: pathlib.Path) -> list[pathlib.Path]:
  """Its finished phases that a child variant starts from: the shared ones, every refine round
  and every stage's evaluation (a variant that reruns only the control keeps SRIT's)."""
  shared = [workdir / name for name in SHARED_PHASES]
  shared += [p for p in sorted(workdir.glob("*")) if p.name.startswith(SHARED_PREFIXES)]
  shared += [p for p in sorted(workdir.glob("eval/*")) if p.relative_to(workdir).as_posix() not in SHARED_PHASES]
  return [p for p in shared if (p / "DONE.json").exists()]


def finished_ancestors(root: pathlib.Path, name: str) -> list[str]:
  """The variants up `name`'s line of parents whose runs have finished under `root`, nearest first."""
  found = []
  while name != "base":
    name = VARIANTS[name].parent
    if (root / name / "STUDY_DONE").exists():
      found.append(name)
  return found


# Those each shared phase depends on: demonstrations and SFT not on what evaluation is asked.
PHASE_SETTINGS = {
  "demos": ("student", "seed=", "train_task", "demos."),
  "sft": ("student", "seed=", "train_task", "demos.", "sft."),
}


def phase_settings(name: str, phase: str) -> list[str]:
  """The variant's overrides that shared phase `phase` depends on."""
  return sorted(o for o in VARIANTS[name].overrides if o.startswith(PHASE_SETTINGS.get(phase, SHARED_SETTINGS)))


def shared_settings(name: str) -> list[str]:
  """The variant's overrides that the shared phases (demonstrations, SFT, its evaluation) depend on."""
  return sorted(o for o in VARIANTS[name].overrides if o.startswith(SHARED_SETTINGS))


def start_from_finished_phases(root: pathlib.Path, name: str) -> pathlib.Path:
  """The variant's workdir, first filled with hard links to finished phases: those of its
  finished ancestors, each phase from the nearest one that has it (a parent that skipped the
  untuned student's evaluation, say, leaves it to the base); then the shared phases still
  missing, from the other variants here with the same shared settings, finished or not. The
  pipeline reruns a linked phase whose fingerprint is not its own. Nothing to link: it starts empty."""
  workdir = root / name
  if workdir.exists():
    return workdir
  sources = [(root / ancestor, _finished_phases(root / ancestor)) for ancestor in finished_ancestors(root, name)]
  for other in VARIANTS:
    if other != name and (root / other).is_dir():
      shared = [
        p
        for p in _finished_phases(root / other)
        if (phase := p.relative_to(root / other).as_posix()) in SHARED_PHASES
        and phase_settings(other, phase) == phase_settings(name, phase)
      ]
      sources.append((root / other, shared))
  if not any(phases for _, phases in sources):
    return workdir
  partial = root / f"{name}.partial"
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)
  for parent, phases in sources:
    for source in phases:
      target = partial / source.relative_to(parent)
      if target.exists():
        continue  # a nearer one's
      target.parent.mkdir(parents=True, exist_ok=True)
      subprocess.run(["cp", "-al", str(source), str(target)], check=True)
  partial.rename(workdir)
  return workdir


def drop_checkpoints(workdir: pathlib.Path) -> None:
  """A finished variant's training checkpoints: kept only to resume its phases, which later phases
  and variants read through exports (a variant's checkpoints take about 4 GB a training phase)."""
  for phase in _finished_phases(workdir):
    for folder in ("checkpoints", "best_checkpoint"):
      shutil.rmtree(phase / folder, ignore_errors=True)


def pipeline_overrides(name: str, extra: tuple[str, ...] = ()) -> list[str]:
  """The variant's settings as the pipeline's command-line flags: its own, then `extra`."""
  own = VARIANTS[name].overrides + (() if name == "base" else VARIANT_SETTINGS)
  return [f"--config.{o}" for o in (*own, *extra)]


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
      cli.main(["srit-jax", "status", f"--config={CONFIG}", *pipeline_overrides(name, extra), f"--workdir={workdir}"])
    print(flush=True)


def run_variant(root: pathlib.Path, name: str, extra: tuple[str, ...] = (), keep_checkpoints: bool = False) -> None:
  """Runs the variant's pipeline: its own overrides, then `extra` (which win where both set a field).
  A finished variant's checkpoints are removed unless `keep_checkpoints`."""
  workdir = start_from_finished_phases(root, name)
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
  # an editable install elsewhere would have put first on the PATH.
  command = ["nice", "-n", "10", sys.executable, "-m", "srit_jax.cli", "pipeline", f"--config={CONFIG}"]
  command += [*overrides, f"--workdir={workdir}"]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
  print(f"[{name}] {' '.join(command)}", flush=True)
  start = time.time()
  subprocess.run(command, check=True, cwd=ROOT, env=env)
  seconds = done.get("seconds", 0.0) + time.time() - start  # a rerun adds its own time
  marker.write_text(json.dumps({"seconds": seconds, "overrides": overrides}) + "\n")
  if not keep_checkpoints:
    drop_checkpoints(workdir)


def _percent(x: float) -> str:
  return f"{100 * x:.1f}"


def _row(variant: str, comparison: str, task: str, domain: str, paired: dict) -> str:
  low, high = paired["ci95"]
  detectable = paired.get("detectable_difference", float("inf"))
  return (
    f"| {variant} | {comparison} | {task} ({domain}) | {paired['n']} "
    f"| {_percent(paired['first_correct'] / paired['n'])} | {_percent(paired['second_correct'] / paired['n'])} "
    f"| {100 * paired['difference']:+.1f} ({100 * low:+.1f}, {100 * high:+.1f}) "
    f"| {paired['only_first_correct']} / {paired['only_second_correct']} | {paired['mcnemar_p']:.3f} "
    f"| {100 * detectable:.1f} |"
  )


COMPARISONS = (
  ("srit_vs_sft", "SRIT − SFT"),
  ("control_vs_sft", "control − SFT"),
  ("srit_vs_control", "SRIT − control"),
)


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


def _paired_with_base_sft(workdir: pathlib.Path, base_sft: pathlib.Path, task: str) -> dict:
  from srit_jax.phases.evaluate import per_question_outcomes  # JAX's import: only where a report needs it

  def outcomes(answers: pathlib.Path) -> dict[str, bool]:
    return per_question_outcomes(answers) if answers.exists() else {}

  base = outcomes(base_sft / f"{task}.cot.jsonl")
  paired = {}
  for key, _, stage in BASE_SFT_COMPARISONS:
    own = outcomes(workdir / "eval" / stage / f"{task}.cot.jsonl")
    if base and own.keys() == base.keys():
      paired[key] = statistics.paired_comparison(base, own)
  return paired


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


def learning_curves(summary: dict, path: pathlib.Path) -> None:
  """Held-out reward accuracy and margin over the DPO steps of every round of each variant, the
  kept step marked: what the preference training learned, beside the tables' greedy accuracy."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for name, variant in summary.items():
    if name in VARIANTS and VARIANTS[name].diagnostic:
      continue  # its parent's rounds
    for entry in variant["rounds"]:
      label = name if len(variant["rounds"]) == 1 else f"{name}, round {entry['round']}"
      curve = sorted((int(step), values) for step, values in entry["heldout_curve"].items())
      for ax, column in zip(axes, (0, 1)):
        points = [(step, values[column]) for step, values in curve if values[column] is not None]
        if not points:
          continue
        (line,) = ax.plot(*zip(*points), label=label, marker="." if len(points) < 30 else None)
        kept = [p for p in points if p[0] == entry["selected_step"]]
        if kept:
          ax.plot(*kept[0], marker="o", markersize=8, fillstyle="none", color=line.get_color())
  for ax, title in zip(axes, ("held-out reward accuracy", "held-out reward margin")):
    ax.set_title(f"{title} (circle: the kept step)", fontsize=9)
    ax.set_xlabel("DPO step")
  axes[0].legend(fontsize=7)
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
  base_sft = _base_sft_evaluation(root)
  for name, variant in VARIANTS.items():
    results_path = root / name / "results.json"
    if (root / name / "STUDY_DONE").exists() and results_path.exists():
      results = json.loads(results_path.read_text())
      paired = results["paired"]
      if shared_settings(name) and base_sft is not None and not variant.diagnostic:
        paired = {
          task: {**entry, **_paired_with_base_sft(root / name, base_sft, task)} for task, entry in paired.items()
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
      continue
    for key, label in (*COMPARISONS, *((key, label) for key, label, _ in BASE_SFT_COMPARISONS)):
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


def main(argv):
  del argv
  root = pathlib.Path(_ROOT_DIR.value).resolve()
  root.mkdir(parents=True, exist_ok=True)
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; variants: {', '.join(VARIANTS)}")
  if _STATUS.value:
    print_status(root, _VARIANTS.value, tuple(_OVERRIDES.value))
    return
  if not _REPORT_ONLY.value:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    for name in _VARIANTS.value:
      run_variant(root, name, tuple(_OVERRIDES.value), _KEEP_CHECKPOINTS.value)
      report(root, pathlib.Path(_DOC.value))
  report(root, pathlib.Path(_DOC.value))


if __name__ == "__main__":
  sys.path.insert(0, str(ROOT))
  app.run(main)
