"""The loop both training phases share: resume from the latest checkpoint, step, check every
step's loss, write metrics, save checkpoints with the data position, evaluate now and then.

A step's metrics are pulled to the host after the next step is dispatched, so the device never
waits for the host; a state is never saved before its loss was checked. A non-finite loss or
gradient norm stops the run naming the step, and the last good checkpoint stays intact. A
preemption notice (srit_jax/preemption.py) saves the step reached, waits for the save and stops.
A run told to stop early (its held-out loss no longer falls) saves the step reached and ends
there; resumed, it ends again without training.
"""

from __future__ import annotations

import math
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import tqdm

from srit_jax import host_memory, io, preemption
from srit_jax.training import checkpointing, metrics


class NonFiniteLossError(FloatingPointError):
  """The loss or gradient norm became NaN or infinite."""


def run_steps(
  *,
  workdir: pathlib.Path,
  state,
  step_fn: Callable[[Any, Any], tuple[Any, dict]],
  next_batch: Callable[[], Any],
  data_state: Callable[[], dict],
  restore_data_state: Callable[[dict], None],
  num_steps: int,
  save_every: int,
  keep_checkpoints: int = 3,
  async_checkpoints: bool = True,
  derived_metrics: Callable[[int, dict, float], dict] = lambda step, values, seconds: {},
  evaluate: Callable[[Any, int], dict] | None = None,
  eval_every: int = 0,
  stop_early: Callable[[int], str | None] | None = None,
  desc: str = "train",
  progress_keys: tuple[str, ...] = ("loss",),
):
  """Trains from the latest checkpoint in `workdir` to `num_steps`; returns (state, last metrics).

  `step_fn(state, batch)` is the jitted step; `next_batch()` gives the next device batch and
  `data_state()` / `restore_data_state()` save and restore the data position.
  `derived_metrics(step, values, seconds)` adds host-side figures (throughput, MFU, learning
  rate); `evaluate(state, step)` returns held-out metrics every `eval_every` steps.
  `stop_early(step)`, asked after each evaluation and once on resume, says why training should
  end at `step` (None: go on); the state of that step is saved and the loop returns.
  """
  checkpoints = checkpointing.CheckpointManager(
    workdir / "checkpoints", max_to_keep=keep_checkpoints, async_save=async_checkpoints
  )
  start_step = 0
  restored = checkpoints.restore_latest(state)
  if restored is not None:
    start_step, state, saved_data_state = restored
    restore_data_state(saved_data_state)
    print(f"resumed from the checkpoint of step {start_step}")
  if start_step >= num_steps:
    print(f"already trained {start_step} of {num_steps} steps")
  elif start_step and stop_early is not None and (reason := stop_early(start_step)):
    print(f"stopped early at step {start_step} of {num_steps}: {reason}")
    num_steps = start_step
  writer = metrics.MetricWriter(workdir, resume_step=start_step)
  bar = tqdm.tqdm(total=num_steps, initial=start_step, desc=desc, unit="step", disable=jax.process_index() != 0)
  last: dict = {}
  pending = None
  clock = time.perf_counter()

  def record(step, step_metrics):
    nonlocal last, clock
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    now = time.perf_counter()
    seconds, clock = now - clock, now
    if not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
      checkpoints.wait()
      latest = checkpoints.latest_step()
      kept = (
        f"the last good checkpoint (step {latest}) in {checkpoints.directory} is intact"
        if latest
        else "no checkpoint had been saved yet"
      )
      raise NonFiniteLossError(
        f"step {step}: loss {values['loss']}, gradient norm {values['grad_norm']}; stopped, {kept}"
      )
    values.update(derived_metrics(step, values, seconds))
    writer.write(step, values)
    bar.set_postfix({k: f"{values[k]:.4g}" for k in progress_keys if k in values})
    last = values

  try:
    for step in range(start_step + 1, num_steps + 1):
      state, step_metrics = step_fn(state, next_batch())
      checkpoints.check()  # a failed save stops the run here, within a step of it
      if pending is not None:
        record(*pending)
      pending = (step, step_metrics)
      bar.update(1)
      preempted = preemption.requested()
      # Evaluated before the save: a run killed in between evaluates this step again on resume.
      stopping_early = None
      if evaluate is not None and eval_every and step % eval_every == 0:
        writer.write(step, evaluate(state, step))
        stopping_early = stop_early(step) if stop_early is not None else None
      if preempted or stopping_early or step % save_every == 0 or step == num_steps:
        record(*pending)  # never save a state whose loss was not checked
        pending = None
        host_memory.trim()  # the step's freed temporaries go back before the save copies the state
        checkpoints.save(step, state, data_state(), force=preempted or bool(stopping_early))
      if preempted:
        checkpoints.wait()
        raise preemption.Preempted(
          f"preempted: saved the checkpoint of step {step} of {num_steps} in {checkpoints.directory}; "
          "run the same command again to resume"
        )
      if stopping_early:
        bar.close()
        print(f"stopped early at step {step} of {num_steps}: {stopping_early}")
        break
    if pending is not None:
      record(*pending)
  finally:
    bar.close()
    stopping = sys.exc_info()[1]  # the error that stops the run, if one does
    checkpoints.wait()  # a failed save is raised here, over what it caused (a full disk)
    try:
      writer.close()
    except io.WriteError:
      if stopping is None:
        raise  # else the error under way says what stopped the run and what is kept; closing adds nothing
    checkpoints.close()
  return state, last
