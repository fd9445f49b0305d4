"""How long a run takes on its slice: each program's roofline bound (its FLOPs at the chip's
peak or its bytes at full HBM bandwidth, whichever is slower, every layer counted; see
`cost_model.extrapolated_cost`) times how often the config's run makes it, per phase and for the
run, in hours and chip-hours at the bound and at a stated MFU. What `srit-jax plan` prints
after its memory table, and benchmarks/tpu_plan.py's time columns.
"""

from __future__ import annotations

import dataclasses
import math

from srit_jax.planning import topology
from srit_jax.planning.program_plan import SFT_HELD_OUT, ProgramPlan
from srit_jax.tasks import registry

MFU = 0.4  # the stated utilisation beside the bound: 40% of the roofline


@dataclasses.dataclass
class Estimate:
  phase: str
  program: str
  seconds_per_call: float  # the roofline bound of one call
  calls: float | None  # how often the run makes it; None when the config leaves it open
  assumption: str = ""
  per_call: int = 0  # rows of a sampler call, pairs of a reference pass, 0 for a training step
  fits: bool = True  # False: the program does not compile on the slice or exceeds its HBM at these rows

  @property
  def hours(self) -> float | None:
    return None if self.calls is None else self.seconds_per_call * self.calls / 3600


def _ceil(a: float, b: float) -> int:
  return int(-(-a // b))


def _rows_read(task: str, split: str | None, limit: int, where) -> int | None:
  """Examples a phase reads from a split: `limit`, or the whole split (limit 0) where its size is
  known; `where` holds the source and data_dir."""
  size = registry.split_size(task, split or None, source=where.source, data_dir=where.data_dir or None)
  if not limit:
    return size
  return limit if size is None else min(limit, size)


def _training_questions(config, block) -> tuple[int | None, str]:
  """The questions a refine round samples, at most: the demonstrated ones (the pipeline: every
  training question the teacher answered) or the task's, then the new ones."""
  if "student" in config:  # the pipeline: the demonstrations' questions, all of the train task at most
    task, split = config.train_task, config.demos.split or registry.get_task(config.train_task).train_split
    questions = _rows_read(task, split, config.demos.limit, config)
    if questions is not None and block.limit:
      questions = min(questions, block.limit)
  else:
    task, split = block.task, block.split or registry.get_task(block.task).train_split
    questions = _rows_read(task, split, block.limit, block)
  if questions is None:
    return None, f"limit 0: every training question of {task} (its size is not known here)"
  return questions + block.get("new_questions", 0), f"{questions:,} {task} questions"


def _pairs_assumed(block, questions: int) -> int:
  """Training pairs a refine block makes at most: every question at its cap, less the held-out share."""
  return int(questions * block.max_pairs_per_question * (1 - block.heldout_fraction))


def count_calls(config, phase: str, program: str, per_call: int) -> tuple[float | None, str]:
  """How often a run of `config` makes a program of `phase` ("SFT step", "SFT held-out loss",
  "sampler", "DPO step", "reference log-probs"; `per_call` rows or pairs a call), and what that count assumes. A
  stored plan's calls are counted again this way when only the config's counts change."""
  pipeline = "student" in config
  block = config[phase] if pipeline else config
  if phase == "sft":
    if block.get("num_epochs"):
      return None, f"{block.num_epochs} epochs: the steps follow from the packed examples"
    if program == SFT_HELD_OUT:
      return _sft_held_out_calls(config, block, per_call)
    return block.num_steps, _at_most_if_stopping_early(block, "")
  if phase == "refine":
    return _refine_calls(program, per_call, config, block)
  # eval: every stage on every task, CoT (and direct) answers; the rounds' stages in-domain only.
  if pipeline:
    domains = registry.evaluation_domains(config)
    stages = {"sft": list(domains), "srit": list(domains)}
    if config.get("eval_untuned", True):
      stages["untuned"] = list(domains)
    if config.get("control"):
      stages["control"] = list(domains)
    if config.get("eval_rounds"):
      for round_ in range(1, config.refine_iterations):
        stages[f"round {round_}"] = [t for t, d in domains.items() if d == "in-domain"]
  else:
    stages = {"": registry.task_names(config.tasks)}
  questions = {t: _rows_read(t, None, block.limit, config) for tasks in stages.values() for t in tasks}
  unknown = sorted(t for t, n in questions.items() if n is None)
  if unknown:
    return None, f"limit 0: every test question of {', '.join(unknown)} (sizes not known here)"
  styles = 2 if block.direct else 1
  sampled = block.get("sampled_answers", 0)  # CoT answers sampled per question beside the greedy one
  calls = sum(
    styles * _ceil(questions[t], per_call) + (_ceil(sampled * questions[t], per_call) if sampled else 0)
    for tasks in stages.values()
    for t in tasks
  )
  which = f"{len(stages)} stages, {sum(questions.values()):,} questions of {len(questions)} tasks"
  return calls, which + (f", {sampled} sampled CoT answers each" if sampled else "")


def _sft_held_out_calls(config, block, per_call: int) -> tuple[float | None, str]:
  """SFT's held-out passes: at every `eval_every`-th step, each over the held-out examples, a
  row each at most (packing only lowers it). Only a pipeline's count is known before the run:
  its held-out demonstrations are the teacher's solutions of `demos.heldout_questions` questions
  (those it gets right, at most); a held-out file or share of the records is counted when read."""
  evaluations = block.num_steps // block.eval_every
  if not ("student" in config and config.demos.heldout_questions):
    return None, f"{evaluations} evaluations of held-out records whose number is not known here"
  examples = config.demos.heldout_questions
  return evaluations * _ceil(examples, per_call), _at_most_if_stopping_early(
    block, f"{examples:,} held-out solutions at most, a row each, at {evaluations} evaluations"
  )


def _refine_calls(program: str, per_call: int, config, block) -> tuple[float | None, str]:
  """A refine program's calls: per round of the refined chain and of the control (which samples
  nothing in its first round: it trains on the refined chain's samples; its steps, which hold
  the chosen answers alone, at the DPO step's time: a bound; no reference pass over its
  training pairs)."""
  rounds = config.refine_iterations if "student" in config else 1
  control = rounds if config.get("control") else 0
  questions, which = _training_questions(config, block)
  if questions is None:
    return None, which
  if program.startswith("sampler"):
    rows = questions * block.num_cot_samples, questions * block.num_direct_samples
    if block.get("strategy") == "slip_corrected":  # a continuation of each wrong CoT answer at most
      rows += (questions * block.num_cot_samples,)
    sampling_rounds = rounds + max(control - 1, 0)
    return sampling_rounds * sum(_ceil(r, per_call) for r in rows if r), f"{which}, every answer full length"
  pairs = _pairs_assumed(block, questions)
  steps = _ceil(block.num_epochs * pairs, block.batch_size) if block.get("num_epochs") else block.num_steps
  if program.startswith("reference"):  # the training pairs once; the held-out ones at every evaluation
    held_out = _ceil(pairs * block.heldout_fraction, 1 - block.heldout_fraction)
    # The policy at the start, every eval_every steps and at the end (once where they meet).
    evaluations = 1 + (steps // block.eval_every if block.eval_every else 0)
    evaluations += not block.eval_every or steps % block.eval_every != 0
    held_out_calls = (1 + evaluations) * _ceil(held_out, per_call)
    calls = rounds * (_ceil(pairs, per_call) + held_out_calls) + control * held_out_calls
    return calls, _at_most_if_stopping_early(
      block, f"{pairs:,} training pairs, {held_out:,} held out, scored {evaluations + 1} times"
    )
  return (rounds + control) * steps, _at_most_if_stopping_early(
    block, f"{pairs:,} pairs" if block.get("num_epochs") else ""
  )


def _at_most_if_stopping_early(block, assumption: str) -> str:
  """A training phase's assumption, its count said to be at most where the run may stop early."""
  if not block.get("early_stopping_patience"):
    return assumption
  return ", ".join(filter(None, (assumption, "at most: it stops early on the held-out loss")))


def program_of(name: str) -> str:
  """The program a plan's name stands for, without its sizes: "DPO step (…, 128 rows)" -> "DPO step"."""
  return name.split(" (")[0]


def run_estimate(config, plans: list[ProgramPlan], devices, hbm: float = math.inf) -> list[Estimate]:
  """Each program's step-time bound on the slice (roofline: its FLOPs at the chip's peak or its
  bytes at full HBM bandwidth, whichever is slower, every layer counted) and how often the run
  makes it; a program that failed to compile or needs more than `hbm` bytes a chip is marked as
  not fitting. Empty off TPU (no peak to divide by)."""
  peak, bandwidth = topology.peaks(devices[0])
  if not math.isfinite(peak):
    return []
  out = []
  for plan in plans:
    if plan.cost is None:
      continue
    program = program_of(plan.name)
    calls, assumption = count_calls(config, plan.phase, program, plan.per_call)
    seconds = plan.cost.seconds(peak, bandwidth)
    out.append(Estimate(plan.phase, program, seconds, calls, assumption, plan.per_call, plan.fits(hbm)))
  return out


def estimate_report(estimates: list[Estimate], chips: int) -> str:
  """The time table: per program, then per phase and for the run, at the bound and at 40% of it."""
  if not estimates:
    return ""
  lines = [
    f"time on {chips} chips: roofline bounds (no faster than FLOPs at peak or bytes at full HBM bandwidth), "
    f"and at {MFU:.0%} of the roofline",
    "",
    "| phase | program | bound per call, s | calls | hours (bound) | hours at 40% | chip-hours at 40% | assumes |",
    "|---|---|---:|---:|---:|---:|---:|---|",
  ]
  phases: dict[str, float] = {}
  for e in estimates:
    hours = e.hours
    calls = "?" if e.calls is None else f"{e.calls:,.0f}"
    if not e.fits:  # as the fit table: the phase cannot run at these rows, whatever its bound
      cells = ("✗", "✗", "✗")
    elif hours is None:
      cells = ("?", "?", "?")
    else:
      cells = (f"{hours:.3g}", f"{hours / MFU:.3g}", f"{hours / MFU * chips:.3g}")
    lines.append(
      f"| {e.phase} | {e.program} | {e.seconds_per_call:.3g} | {calls} | {' | '.join(cells)} | {e.assumption} |"
    )
    if hours is not None:
      phases[e.phase] = phases.get(e.phase, 0.0) + hours
  open_phases = sorted({e.phase for e in estimates if e.hours is None})
  unfit = sorted({e.phase for e in estimates if not e.fits})
  at_least = "≥ " if open_phases or unfit else ""  # programs of open calls left out, or a phase that cannot run
  total = sum(phases.values())
  summary = ", ".join(
    f"{phase} ✗" if phase in unfit else f"{phase} {'≥ ' if phase in open_phases else ''}{phases[phase] / MFU:.3g} h"
    for phase in dict.fromkeys(e.phase for e in estimates)
    if phase in phases or phase in unfit
  )
  lines += ["", f"at 40%: {summary}; the run {at_least}{total / MFU:.3g} h, {at_least}{total / MFU * chips:.3g} "
            f"chip-hours (bound {at_least}{total:.3g} h, {at_least}{total * chips:.3g} chip-hours)"]  # fmt: skip
  if open_phases:
    lines.append(f"(≥: without the programs of {', '.join(open_phases)} whose calls the config leaves open: '?' above)")
  if unfit:
    lines.append(
      f"(✗: a program of {', '.join(unfit)} does not fit the slice at its rows (the table above), so that phase "
      "cannot run as configured; the run's figures add every bound there is, a lower bound: ≥)"
    )
  return "\n".join(lines)
