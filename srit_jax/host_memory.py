"""The process's peak resident memory (Linux): what a run needs of the machine, per phase.

`reset_peak()` starts a new measurement (the kernel's high-water mark, VmHWM, is reset through
/proc/self/clear_refs); `peak_bytes()` reads it. Elsewhere both do nothing and the peak is None.
`release()` gives back what a finished phase leaves behind: compiled programs and the arrays
only they kept alive.
"""

from __future__ import annotations

import contextlib
import gc
import pathlib


def reset_peak() -> None:
  # Not Linux, or not allowed: the peak then counts from the process's start.
  with contextlib.suppress(OSError):
    pathlib.Path("/proc/self/clear_refs").write_text("5")


def peak_bytes() -> int | None:
  try:
    status = pathlib.Path("/proc/self/status").read_text()
  except OSError:
    return None
  for line in status.splitlines():
    if line.startswith("VmHWM:"):
      return int(line.split()[1]) * 1024
  return None


def release() -> None:
  import jax

  gc.collect()
  jax.clear_caches()
  gc.collect()
