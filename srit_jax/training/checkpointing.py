"""Orbax checkpoints of a training run: the train state and the data iterator's position.

Saves are asynchronous and atomic (Orbax writes to a temporary directory and renames it when
complete), so a run killed during a save resumes from the previous checkpoint.
"""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp


class CheckpointManager:
  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict, *, force: bool = False) -> None:
    self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
      force=force,
    )

  def restore(self, step: int, abstract_state):
    """(state, data_state) of `step`, the state placed in the shardings of `abstract_state`."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore())
    )
    return restored["state"], restored["data"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
