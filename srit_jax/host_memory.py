"""The process's peak resident memory (Linux): what a run needs of the machine, per phase.

`reset_peak()` starts a new measurement (the kernel's high-water mark, VmHWM, is reset through
/proc/self/clear_refs); `peak_bytes()` reads it. Elsewhere both do nothing and the peak is None.
`release()` gives back what a finished phase leaves behind: compiled programs (unless the next
phase runs them again), the arrays only they kept alive, and the heap pages freed since (glibc
keeps them otherwise).
`fewer_malloc_arenas()`: glibc gives each thread that allocates its own heap arena, and XLA's
many threads then hold gigabytes of freed memory scattered over them; two arenas bound that
(call it before JAX starts its threads). Both are no-ops where libc is not glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import pathlib

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
