"""Orbax checkpoints of a training run: the train state and the data iterator's position.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it when
complete), so a run killed during a save resumes from the previous checkpoint. A save that
fails (a full disk, a bucket over quota) is reported as soon as it is known — `check()` after
every step — as one `WriteError` naming the step, the place, the reason and the checkpoints
still intact. A checkpoint damaged afterwards (a truncated or lost file) is skipped at resume:
`restore_latest` names it and why, moves it aside to `<step>.damaged`, and resumes from the
newest one that restores.

A save's host copies of the state are freed when it ends (some by Orbax's threads a little
later), but glibc keeps the freed pages in its heap, where the next steps' temporaries do not
fit in them: they are given back (`host_memory.trim`) when a save ends and at the next
`TRIMS_AFTER_SAVE` checks, or a run would hold one more state's size for the rest of its steps.
"""

from __future__ import annotations

import contextlib
import pathlib

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from srit_jax import host_memory, io

TRIMS_AFTER_SAVE = 2


class CheckpointManager:
  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = io.as_path(directory)  # gs://: Orbax's own object-storage path, commit markers for renames
    if not io.is_remote(self.directory):
      self.directory = self.directory.absolute()
    with io.writing("checkpoints to", self.directory):
      self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
          max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
        ),
      )
    self._trims_left = 0  # checks that still give freed heap pages back after a save
    self._saving: int | None = None  # the step of the save in flight, if any
    self._failure_reported = False  # Orbax raises a failed save's error again at every wait

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict, *, force: bool = False) -> None:
    if self._saving is not None:  # the save before: done by now (steps apart), and any failure its own
      self.wait()
    self._saving = step
    with self._reported():
      self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        force=force,
      )
    if not self._manager.is_saving_in_progress():  # a save in the step: ended already
      self.wait()

  def check(self) -> None:
    """Raises WriteError when the save in flight has failed; never waits for one still running."""
    if self._saving is not None and not self._manager.is_saving_in_progress():
      self.wait()  # it has ended: waiting returns at once, raising what its thread raised
    elif self._trims_left:
      self._trims_left -= 1
      host_memory.trim()

  @contextlib.contextmanager
  def _reported(self):
    try:
      yield
    except Exception as e:  # Orbax and TensorStore report write failures as several exception types
      if self._failure_reported:
        return  # said once already; the run is stopping
      self._failure_reported = True
      step, self._saving = self._saving, None
      intact = self._steps_other_than(step)
      steps = ", ".join(map(str, intact))
      kept = (
        f"the checkpoints of steps {steps} are intact and the same command resumes from the newest"
        if intact
        else "no earlier checkpoint was saved (the same command starts over)"
      )
      raise io.WriteError(
        f"could not save the checkpoint of step {step} in {self.directory}: {io.os_reason(e)}; {kept}"
      ) from e

  def _steps_other_than(self, failed: int | None) -> list[int]:
    """The saved steps but `failed`, newest first: Orbax's list, or the finished step folders
    where Orbax raises the failed save's error again when asked."""
    try:
      steps = self._manager.all_steps()
    except Exception:
      steps = [int(p.name) for p in self.directory.iterdir() if p.name.isdigit()]
    return [s for s in sorted(steps, reverse=True) if s != failed]

  def restore(self, step: int, abstract_state):
    """(state, data_state) of `step`, the state placed in the shardings of `abstract_state`."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
    )
    return restored["state"], restored["data"]

  def restore_latest(self, abstract_state, *, log=print):
    """(step, state, data_state) of the newest checkpoint that restores with finite values, or
    None; each newer one that does not is named, with the reason, and moved aside."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        state, data_state = self.restore(step, abstract_state)
        bad = [
          jax.tree_util.keystr(path)
          for path, leaf in jax.tree_util.tree_leaves_with_path(state)
          if jnp.issubdtype(leaf.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(leaf)))
        ]
        if bad:
          raise ValueError(f"non-finite values in {bad[0]}")
        return step, state, data_state
      except Exception as e:  # a damaged checkpoint: say which and why, then try the one before
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        aside = self.directory / f"{step}.damaged"
        if io.is_writer():
          (self.directory / str(step)).rename(aside)
        io.barrier(f"set aside checkpoint {step}")
        log(f"checkpoint {step} in {self.directory} does not restore ({reason}); moved to {aside.name}")
        self._manager.reload()
    return None

  def wait(self) -> None:
    with self._reported():
      self._manager.wait_until_finished()
    if self._saving is not None:
      self._saving = None
      self._saved()

  def _saved(self) -> None:
    host_memory.trim()
    self._trims_left = TRIMS_AFTER_SAVE

  def close(self) -> None:
    with self._reported():
      self._manager.close()
