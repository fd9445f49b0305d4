"""Stopping cleanly when a spot or preemptible TPU VM is reclaimed.

The VM gets a termination notice (SIGTERM) about 30 seconds ahead. Long loops — training steps,
generation batches — ask `requested()` at each safe point: a training phase then finishes the
step it is in, saves a checkpoint of that step, waits for the save and raises `Preempted`; a
generation phase raises it after the batch it wrote. The command line turns it into one line and
the exit status `EXIT_CODE`, which `tpu_scripts/launch.sh --retry` reads as "run it again".

One process: `install()` makes SIGTERM set a flag instead of killing the process. Several
processes (`jax.distributed`): JAX's preemption service receives the notice on any host and
agrees with every host on the step at which all of them stop
(`multihost_utils.reached_preemption_sync_point`), so all hosts save the same step. Every
process asks at the same safe points in the same order (they run one program), numbered by one
counter per process.
"""

from __future__ import annotations

import itertools
import signal
import threading

EXIT_CODE = 75  # EX_TEMPFAIL: the work is saved; run the same command again


class Preempted(Exception):
  """The run stopped for a preemption notice after saving what it had done."""


_notice = threading.Event()
_safe_points = itertools.count()


def install() -> None:
  """SIGTERM sets the notice instead of ending the process. Call from the main thread, before
  `jax.distributed.initialize`: with several processes JAX's preemption service then takes the
  signal over (and `requested` asks it)."""
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, lambda signum, frame: _notice.set())


def requested() -> bool:
  """Whether to stop at this safe point; every process gets the same answer at the same point."""
  import jax  # here, not at import: the command line installs the handler before loading JAX

  point = next(_safe_points)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    try:
      return multihost_utils.reached_preemption_sync_point(point)
    except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
      return False
  return noticed()


def noticed() -> bool:
  """Whether this process got the notice itself: for work that one process does alone (asking a
  teacher over HTTP), where no safe point is shared. Under `jax.distributed` JAX's service takes
  the signal, so this stays False there and only `requested` sees it."""
  return _notice.is_set()


def notify() -> None:
  """The notice as SIGTERM gives it (for tests and for callers with their own signal)."""
  _notice.set()


def clear() -> None:
  _notice.clear()
