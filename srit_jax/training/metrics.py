"""Training metrics to JSON Lines and TensorBoard, with resume that drops stale lines.

Both are written by process 0 in the calling thread: a write that fails (a full disk) raises
a WriteError at the step that made it, where a background writer thread would die and leave
the run waiting on its queue.
"""

from __future__ import annotations

import json
import pathlib
import time

import jax

from srit_jax import io

FLUSH_SECONDS = 30.0  # TensorBoard events reach the file (or, on gs://, the object) at most this late


class MetricWriter:
  def __init__(self, workdir: pathlib.Path, *, resume_step: int = 0):
    self.path = workdir / "metrics.jsonl"
    self._is_writer = jax.process_index() == 0
    self._events = None
    self._lines = None
    if not self._is_writer:
      return
    # lines after the checkpoint we resume from are about to be redone
    kept = [line for line in io.complete_lines(self.path) if _step(line) <= resume_step]
    self._lines = io.JsonlAppender(self.path, keep_lines=kept)
    from tensorboardX import record_writer
    from tensorboardX.event_file_writer import EventsWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    self.events_dir = workdir / "tensorboard"
    with io.writing("TensorBoard events to", self.events_dir):
      record_writer.directory_check(str(self.events_dir))
      # Named by the second it starts and the step it resumes from: a resume never overwrites.
      self._events = EventsWriter(str(self.events_dir / "events"), filename_suffix=f".from_step_{resume_step}")
      # TensorBoard hides the events a killed run wrote after the step resumed from.
      start = SessionLog(status=SessionLog.START)
      self._events.write_event(Event(step=resume_step + 1, wall_time=time.time(), session_log=start))
      self._events.flush()
    self._flushed = time.monotonic()

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._is_writer:
      return
    self._lines.append([{"step": step, **scalars}])
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.summary_pb2 import Summary

    values = [Summary.Value(tag=name, simple_value=float(value)) for name, value in scalars.items()]
    with io.writing("TensorBoard events to", self.events_dir):
      self._events.write_event(Event(step=step, wall_time=time.time(), summary=Summary(value=values)))
      if time.monotonic() - self._flushed > FLUSH_SECONDS:
        self._events.flush()
        self._flushed = time.monotonic()

  def close(self) -> None:
    if self._lines is not None:
      self._lines.close()
    if self._events is not None:
      events, self._events = self._events, None
      with io.writing("TensorBoard events to", self.events_dir):  # the last events are flushed here
        events.close()


def _step(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (json.JSONDecodeError, KeyError, TypeError, ValueError):
    return 1 << 62  # a line cut by a kill: drop it
