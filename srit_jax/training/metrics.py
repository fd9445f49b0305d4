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
    if not self._is_writer:
      return
    if self.path.exists():  # lines after the checkpoint we resume from are about to be redone
      kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if _step(line) <= resume_step]
      io.write_text(self.path, "".join(line + "\n" for line in kept))
    from tensorboardX import SummaryWriter

    with io.writing("TensorBoard events to", workdir / "tensorboard"):
      self._tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._is_writer:
      return
    with io.writing("metrics to", self.path), open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": step, **scalars}) + "\n")
    with io.writing("TensorBoard events to", self._tensorboard.logdir):
      for name, value in scalars.items():
        self._tensorboard.add_scalar(name, value, step)

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def _step(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError):
    return 1 << 62  # a line cut by a kill: drop it
