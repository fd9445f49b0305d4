"""Where a run stands, read from its workdir alone: whether a live run holds it, and each phase
done, under way (how far, and at the recent pace how long to go) or not started.

    srit-jax status --workdir=runs/demo
    srit-jax status --workdir=runs/demo --config=configs/demo.py     # a config other than the run's

A pipeline's workdir shows its phases in the order the pipeline runs them, those still to come
too (from the config the pipeline recorded in its run_config.json, or the one given); the workdir of one
phase (`sft`, `refine`, `eval`, `demos`, or the folder of `generate`'s file) shows that phase.
Local and `gs://` workdirs alike. It only reads, so it is safe beside the running job, from any
host. "done" says a phase finished; whether it is still current for a changed config only the
run itself decides (it reruns what changed).
"""

from __future__ import annotations

import dataclasses
import json
import re
import statistics

from srit_jax import io
from srit_jax.phases import phase_time, workdir_lock
from srit_jax.training import best_step

DONE, UNDER_WAY, NOT_STARTED = "done", "under way", "not started"
_RECENT_STEPS = 20  # the pace of a training phase: the median step time of its last steps


@dataclasses.dataclass
class PhaseStatus:
  name: str
  state: str  # DONE | UNDER_WAY | NOT_STARTED
  details: list[str] = dataclasses.field(default_factory=list)
  seconds_left: float | None = None  # a training phase under way, at its recent pace
  seconds_taken: float | None = None  # a pipeline's phase done: its wall time over its attempts (0 taken over)
  taken_over: bool = False  # done by another run and taken over (reuse_phases_from)


def _json(path) -> dict | None:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def saved_steps(directory) -> list[int]:
  """The steps of the finished checkpoints in `directory`/checkpoints, by Orbax's own rule (a
  local save under way has a temporary name until it is renamed; on `gs://` a step's folder
  counts once it holds its commit marker)."""
  import orbax.checkpoint as ocp

  folder = directory / "checkpoints"
  if not folder.exists():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and ocp.step.is_path_finalized(p))


def _held_out_losses(records: list[dict]) -> dict[int, float]:
  """The held-out loss that chooses the step, logged at each evaluated step (DPO's "eval/loss" or
  its selection loss where another, SFT's "eval_loss")."""
  logged = best_step.held_out_figures(records)
  losses = {
    step: values.get(best_step.SELECTION_LOSS, values.get("eval/loss", values.get("eval_loss")))
    for step, values in logged.items()
  }
  return {step: loss for step, loss in losses.items() if loss is not None}


def _training(directory, done: bool) -> tuple[list[str], float | None]:
  """A training phase's steps (reached, saved, of how many, where it may stop early), its
  held-out loss, and the time to its last step at the median of its recent step times."""
  run = _json(directory / "run.json") or {}
  records = io.complete_records(directory / "metrics.jsonl")  # read once: on gs:// each read downloads it
  steps = [s for s in records if s.get("tokens_per_s")]
  reached = max((s["step"] for s in steps), default=0)
  kept = _json(directory / "best_checkpoint.json")
  if done:
    kept_step = f", step {kept['step']} kept (lowest held-out loss {kept['loss']:.4f})" if kept else ""
    return [f"{reached} steps run{kept_step}"], None
  saved = saved_steps(directory)
  held_out = _held_out_losses(records)
  # A step's held-out loss and its checkpoint can land before its own line of metrics, which the
  # loop writes once the next step is under way.
  reached = max(reached, max(held_out, default=0), max(saved, default=0))
  of = f" of {run['num_steps']}" if run.get("num_steps") else ""
  details = [f"step {reached}{of} reached, " + (f"step {saved[-1]} saved" if saved else "none saved yet")]
  if kept:  # the evaluation before the first step, which the metrics do not log, may be the lowest
    held_out.setdefault(kept["step"], kept["loss"])
  if held_out:
    lowest = min(held_out, key=held_out.get)
    loss = f"{run['selection_loss']} loss" if run.get("selection_loss") else "loss"
    details.append(
      f"held-out {loss} lowest at step {lowest} ({held_out[lowest]:.4f}), last evaluated at step {max(held_out)}"
    )
  last = run.get("num_steps")
  patience, every = run.get("early_stopping_patience", 0), run.get("eval_every", 0)
  if patience and every and kept:  # the run ends once `patience` evaluations pass without a new low
    stop = kept["step"] + patience * every
    last = min(last, stop) if last else stop
  recent = [s["tokens"] / s["tokens_per_s"] for s in steps[-_RECENT_STEPS:] if s.get("tokens")]
  if not (recent and last):
    return details, None
  pace = statistics.median(recent)
  seconds_left = max(last - reached, 0) * pace
  early = " if it stops early then" if last != run.get("num_steps") else ""
  details.append(f"{pace:.3g} s a step lately: about {phase_time.duration(seconds_left)} to step {last}{early}")
  return details, seconds_left


def _generations(directory) -> list[str]:
  """Each streamed generation file's whole lines against the lines it will hold (its records
  times their samples, from the file's `.meta.json`); a file on `gs://` is read whole to count."""
  out = []
  for meta_path in sorted(directory.glob("*.jsonl.meta.json"), key=str):
    meta = _json(meta_path) or {}
    name = meta_path.name.removesuffix(".meta.json")
    lines = len(io.complete_lines(directory / name))
    expected = meta.get("records", 0) * meta.get("num_samples", 1)
    out.append(f"{name} {lines:,}" + (f" of {expected:,} lines" if expected else " lines"))
  return out


def _evaluation(directory) -> list[str]:
  """A finished evaluation's accuracy per task and style."""
  summary = _json(directory / "summary.json") or {}
  return [
    f"{task} {style} {entry['accuracy']:.1%} of {entry['n']}"
    for task, styles in summary.items()
    if isinstance(styles, dict)
    for style, entry in styles.items()
    if isinstance(entry, dict) and "accuracy" in entry and "n" in entry
  ]


# A pipeline phase's completion marker, and what a phase run on its own writes last.
_FINISHED_FILES = {"DONE.json", "sft_summary.json", "refine_summary.json"}


def phase_status(directory, name: str) -> PhaseStatus:
  """The state of one phase's folder, from the files its phase writes."""
  files = {p.name for p in directory.iterdir()} if directory.exists() else set()
  if not files:
    return PhaseStatus(name, NOT_STARTED)
  training = bool(files & {"run.json", "checkpoints"})
  evaluation = not training and {"summary.json", "results.md"} <= files  # an evaluation writes both last
  demonstrations = not training and {"summary.json", "demos.jsonl"} <= files  # demos writes its summary last
  done = bool(files & _FINISHED_FILES) or evaluation or demonstrations
  details, seconds_left = _training(directory, done) if training else ([], None)
  if evaluation:
    details += _evaluation(directory)
  elif demonstrations:
    details.append(f"{len(io.complete_lines(directory / 'demos.jsonl')):,} demonstrations kept")
  if not done or not details:
    details = _generations(directory) + details
  marker = (_json(directory / "DONE.json") or {}) if done else {}
  taken, taken_over = marker.get("seconds"), "taken_over_from" in marker
  if taken_over:  # made by another run: no time of this run's
    details.append(f"taken over from {marker['taken_over_from']}")
    taken = 0.0
  elif taken is not None:  # a pipeline's phase: the wall time over its attempts
    attempts = marker.get("attempts", 1)
    details.append(f"took {phase_time.duration(taken)}" + (f" over {attempts} attempts" if attempts > 1 else ""))
  return PhaseStatus(name, DONE if done else UNDER_WAY, details, seconds_left, taken, taken_over)


def _phase_order(name: str) -> tuple:
  """The pipeline's order of its phase folders: demos, sft, the refined rounds, the control's
  rounds, then the evaluations."""
  group = {"demos": 0, "sft": 1}.get(name)
  if group is None:
    group = 4 if name.startswith("eval/") else 3 if name.startswith("refine_control") else 2
  round_ = re.search(r"_(\d+)$", name)
  return group, int(round_.group(1)) if round_ and group in (2, 3) else 1, name


def _is_pipeline_phase(name: str) -> bool:
  return name in ("demos", "sft") or name.startswith("refine")


def _pipeline_of(folder):
  """The pipeline workdir a phase folder (WORKDIR/refine_2, WORKDIR/eval/sft) belongs to, or None."""
  if folder.parent.name == "eval":
    return folder.parent.parent
  return folder.parent if _is_pipeline_phase(folder.name) else None


def _pipeline_phases_on_disk(workdir) -> list[str]:
  names = [p.name for p in workdir.iterdir() if p.is_dir() and _is_pipeline_phase(p.name)]
  if (workdir / "eval").is_dir():
    names += [f"eval/{p.name}" for p in (workdir / "eval").iterdir() if p.is_dir()]
  return sorted(names, key=_phase_order)


def workdir_status(workdir, expected_phases=()) -> dict:
  """{"holder": the live run holding the workdir or None, "phases": [PhaseStatus]}: a pipeline's
  phases (those on disk, and `expected_phases` in their order where given), or the workdir
  itself as one phase."""
  workdir = io.as_path(workdir)
  if not workdir.exists():
    raise FileNotFoundError(f"{workdir}: no such workdir")
  on_disk = _pipeline_phases_on_disk(workdir)
  names = list(expected_phases) + [n for n in on_disk if n not in expected_phases]  # and folders of another config
  if names:
    phases = [phase_status(workdir / name, name) for name in names]
  else:
    phases = [phase_status(workdir, workdir.name)]
  holder = workdir_lock.live_holder(workdir)
  if holder is None and (pipeline := _pipeline_of(workdir)) is not None:
    holder = workdir_lock.live_holder(pipeline)  # a pipeline's phase folder is held through its workdir
  return {"holder": holder, "phases": phases}


def report(workdir, status: dict) -> str:
  """The status as a few lines: who holds the workdir, then a table of the phases."""
  holder = status["holder"]
  phases = status["phases"]
  if holder is not None:
    who = f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
    head = f"{workdir}: a run is under way ({who})"
  elif any(p.state == UNDER_WAY for p in phases):
    head = f"{workdir}: no run holds it; the same command resumes the phase under way"
  else:
    head = f"{workdir}: no run holds it"
  lines = [head, "", "| phase | state | progress |", "|---|---|---|"]
  lines += [f"| {p.name} | {p.state} | {'; '.join(p.details)} |" for p in phases]
  done = sum(p.state == DONE for p in phases)
  taken = [p.seconds_taken for p in phases if p.seconds_taken is not None]
  timed = ""
  if taken and len(taken) == done:
    timed = f", in {phase_time.duration(sum(taken))} of wall time"
  elif taken:  # the others finished before their time was kept
    timed = f"; {len(taken)} of them took {phase_time.duration(sum(taken))} of wall time"
  taken_over = sum(p.taken_over for p in phases)
  if taken_over:
    timed += f" ({taken_over} taken over from other runs)"
  lines += ["", f"{done} of {len(phases)} phases done{timed}"]
  results = io.as_path(workdir) / "results.md"
  if done == len(phases) and results.exists():  # a pipeline's table of every stage
    lines.append(f"results: {results}")
  return "\n".join(lines)


def run(workdir, config=None) -> dict:
  """Prints where the run in `workdir` stands; with a pipeline's `config` (by default the one the
  last pipeline started there recorded), its phases not started yet as well."""
  import ml_collections

  from srit_jax.phases import pipeline

  if config is None and (recorded := _json(io.as_path(workdir) / pipeline.RUN_CONFIG)) is not None:
    config = ml_collections.ConfigDict(recorded)
  expected = pipeline.phase_names(config) if config is not None and "student" in config else ()
  status = workdir_status(workdir, expected)
  print(report(workdir, status))
  return status
