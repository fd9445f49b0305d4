"""The process's peak resident memory (Linux): what a run needs of the machine, per phase.

`reset_peak()` starts a new measurement (the kernel's high-water mark, VmHWM, is reset through
/proc/self/clear_refs); `peak_bytes()` reads it. Elsewhere both do nothing and the peak is None.
`release()` gives back what a finished phase leaves behind: compiled programs (unless the next
phase runs them again), the arrays only they kept alive, and the heap pages freed since (glibc
keeps them otherwise).
`sampled_peak()`: the largest resident memory seen while a block runs (a compile, say), sampled
beside it, which leaves the phase's own high-water mark as it was.
`fewer_malloc_arenas()`: glibc gives each thread that allocates its own heap arena, and XLA's
many threads then hold gigabytes of freed memory scattered over them; two arenas bound that
(call it before JAX starts its threads). Both are no-ops where libc is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import pathlib
import threading

_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _glibc():
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name) if name else None
  except OSError:
    return None
  return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def fewer_malloc_arenas(arenas: int = 2) -> None:
  libc = _glibc()
  if libc is not None:
    libc.mallopt(_M_ARENA_MAX, arenas)


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


def resident_bytes() -> int | None:
  """The process's resident memory now (Linux), else None."""
  try:
    return int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
  except (OSError, ValueError, IndexError):
    return None


class PeakSample:
  """What `sampled_peak` saw: `bytes`, the largest resident memory (None where unknown)."""

  bytes: int | None = None

  def see(self, value: int | None) -> None:
    if value is not None and (self.bytes is None or value > self.bytes):
      self.bytes = value


@contextlib.contextmanager
def sampled_peak(interval_s: float = 0.05):
  """Yields a `PeakSample` that holds, once the block ends, the largest resident memory seen while
  it ran: read every `interval_s` by a thread beside it, and at its start and end. A peak shorter
  than the interval can be missed; the kernel's high-water mark (`peak_bytes`) is not reset, so
  a phase that measures its own peak around the block still sees the block's."""
  sample, stop = PeakSample(), threading.Event()

  def watch():
    while not stop.wait(interval_s):
      sample.see(resident_bytes())

  sample.see(resident_bytes())
  watcher = threading.Thread(target=watch, name="sampled_peak", daemon=True)
  watcher.start()
  try:
    yield sample
  finally:
    stop.set()
    watcher.join()
    sample.see(resident_bytes())


def trim() -> None:
  """Returns the heap's free pages to the system (before a checkpoint's copies are made, say)."""
  libc = _glibc()
  if libc is not None:
    libc.malloc_trim(0)


def release(programs: bool = True) -> None:
  """Frees what nothing refers to any more; with `programs`, JAX's compiled and traced programs
  too (and what they alone kept alive). Keep them (False) for a phase that runs the same programs
  again: each would be traced and lowered anew (the persistent cache spares only the compile)."""
  import jax

  if programs:
    jax.clear_caches()
  gc.collect()  # after the caches: what they alone kept alive goes in the same pass
  trim()
