"""Training metrics to JSON Lines and TensorBoard, with resume that drops stale lines."""

from __future__ import annotations

import json
import pathlib

import jax

from srit_jax import io


class MetricWriter:
  def __init__(self, workdir: pathlib.Path, *, resume_step: int = 0):
    self.path = workdir / "metrics.jsonl"
    self._is_writer = jax.process_index() == 0
    self._tensorboard = None
    self._lines = None
    if not self._is_writer:
      return
    # lines after the checkpoint we resume from are about to be redone
    kept = [line for line in io.complete_lines(self.path) if _step(line) <= resume_step]
    self._lines = io.JsonlAppender(self.path, keep_lines=kept)
    from tensorboardX import SummaryWriter

    with io.writing("TensorBoard events to", workdir / "tensorboard"):
      self._tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._is_writer:
      return
    self._lines.append([{"step": step, **scalars}])
    with io.writing("TensorBoard events to", self._tensorboard.logdir):
      for name, value in scalars.items():
        self._tensorboard.add_scalar(name, value, step)

  def close(self) -> None:
    if self._lines is not None:
      self._lines.close()
    if self._tensorboard is not None:
      self._tensorboard.close()


def _step(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError):
    return 1 << 62  # a line cut by a kill: drop it
