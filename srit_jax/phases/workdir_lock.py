"""One live run per workdir: a lock file naming its holder, taken over when the holder is gone.

`WORKDIR/.srit_jax.lock` holds the holder's host, pid and start time; while the run lives a
thread refreshes the file every few seconds. A second run on the same workdir stops at once
with a message naming the holder. A lock whose holder is dead (same host: no such pid;
another host: not refreshed for `STALE_AFTER_S`) is taken over, so a killed run restarts
with the same command. On a multi-process run process 0 holds the lock for all processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import sys
import threading
import time

LOCK_NAME = ".srit_jax.lock"
REFRESH_S = 5.0
STALE_AFTER_S = 60.0


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _holder(path: pathlib.Path) -> dict | None:
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def _is_stale(path: pathlib.Path, holder: dict | None) -> bool:
  if holder is None:  # unreadable or half written: stale once it stops changing
    try:
      return time.time() - path.stat().st_mtime > STALE_AFTER_S
    except FileNotFoundError:
      return True
  if holder.get("host") == socket.gethostname():
    return not _alive(int(holder.get("pid", -1)))
  return time.time() - path.stat().st_mtime > STALE_AFTER_S


class WorkdirLock:
  def __init__(self, workdir: str | pathlib.Path, name: str = LOCK_NAME):
    self.path = pathlib.Path(workdir) / name
    self._token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _record(self) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": started, "token": self._token})

  def _try_create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(self._record())
    return True

  def acquire(self) -> None:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if not self._try_create():
      holder = _holder(self.path)
      if not _is_stale(self.path, holder):
        who = f"pid {holder['pid']} on host {holder['host']} since {holder['since']}" if holder else "another run"
        raise WorkdirLockedError(
          f"{self.path.parent}: in use by {who} (lock file {self.path}); wait for that run to end, "
          "or use another --workdir"
        )
      # The holder is gone: take over. Write ours beside and rename, then check that we won a race.
      partial = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}")
      partial.write_text(self._record(), encoding="utf-8")
      partial.replace(self.path)
      time.sleep(0.05)
      if (_holder(self.path) or {}).get("token") != self._token:
        raise WorkdirLockedError(f"{self.path.parent}: another run took over the stale lock {self.path} first")
    self._thread = threading.Thread(target=self._refresh, daemon=True, name="workdir-lock")
    self._thread.start()

  def _refresh(self) -> None:
    while not self._stop.wait(REFRESH_S):
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      if (_holder(self.path) or {}).get("token") == self._token:
        self.path.unlink(missing_ok=True)


def _process_layout() -> tuple[int, int]:
  """(this process's index, process count); one process when JAX is not even loaded yet."""
  jax = sys.modules.get("jax")
  return (jax.process_index(), jax.process_count()) if jax is not None else (0, 1)


@contextlib.contextmanager
def hold(workdir: str | pathlib.Path, name: str = LOCK_NAME):
  """Holds the workdir's lock for the body (process 0 for all processes of a multi-process run).

  `name` names the lock file: a command that writes one file rather than a workdir locks
  `.<file name>.lock` beside it.
  """
  lock = WorkdirLock(workdir, name)
  error = ""
  index, count = _process_layout()
  if index == 0:
    try:
      lock.acquire()
    except WorkdirLockedError as e:
      error = str(e)
  if count > 1:
    import jax
    from jax.experimental import multihost_utils

    # Every process learns whether process 0 got the lock, and stops with it if not.
    failed = bool(multihost_utils.broadcast_one_to_all(jax.numpy.asarray(bool(error))))
    if failed and not error:
      error = f"{pathlib.Path(workdir)}: in use by another run (see {lock.path})"
  if error:
    raise WorkdirLockedError(error)
  try:
    yield lock
  finally:
    lock.release()
