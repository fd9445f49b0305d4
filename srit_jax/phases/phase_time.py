"""The wall time a pipeline phase took, over all the attempts that ran it.

A phase that is stopped (a kill, a preemption) and resumed runs in several attempts. Each attempt
records its start in the phase folder's attempts.json; the one that finishes the phase records
its end, and the phase's time is the sum of its attempts. An attempt that was stopped recorded no
end: it is taken as the last time it wrote a file in the folder, as the next attempt finds it (on
`gs://`, where that is not read, the stopped attempt is left out and the sum is a lower bound).
The time between attempts (the machine down, the job queued) is not counted.
"""

from __future__ import annotations

import json
import os
import time

from srit_jax import io

ATTEMPTS = "attempts.json"


def _attempts(directory) -> list[dict]:
  try:
    return json.loads((directory / ATTEMPTS).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return []


def _last_write(directory) -> float | None:
  """The latest modification time of a file under a local `directory` (None on object storage)."""
  if io.is_remote(directory):
    return None
  times = [
    os.stat(os.path.join(folder, name)).st_mtime
    for folder, _, names in os.walk(directory)
    for name in names
    if name != ATTEMPTS
  ]
  return max(times, default=None)


def start_attempt(directory) -> None:
  """Records that an attempt at the phase in `directory` starts now, after closing the one before
  it (if it stopped without finishing) at its last write."""
  if not io.is_writer():
    return
  directory = io.as_path(directory)
  attempts = _attempts(directory)
  if attempts and attempts[-1].get("ended") is None:
    last = _last_write(directory)
    attempts[-1]["ended"] = max(last, attempts[-1]["started"]) if last is not None else None
    attempts[-1]["stopped"] = True
  io.write_json(directory / ATTEMPTS, [*attempts, {"started": time.time()}])


def finish_attempt(directory) -> dict:
  """Closes the attempt under way and returns {"seconds": the phase's time over its attempts,
  "attempts": how many ran it}; {} where no attempt was recorded."""
  directory = io.as_path(directory)
  attempts = _attempts(directory) if io.is_writer() else []
  if not attempts:
    return {}
  attempts[-1]["ended"] = time.time()
  io.write_json(directory / ATTEMPTS, attempts)
  seconds = sum(a["ended"] - a["started"] for a in attempts if a.get("ended") is not None)
  return {"seconds": round(seconds, 3), "attempts": len(attempts)}


def duration(seconds: float) -> str:
  """A span of time for a reader: seconds, minutes or hours."""
  if seconds < 90:
    return f"{seconds:.0f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"
