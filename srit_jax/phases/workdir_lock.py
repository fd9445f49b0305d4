"""One live run per workdir: a lock file naming its holder, taken over when the holder is gone.

`WORKDIR/.srit_jax.lock` holds the holder's host, pid and start time; while the run lives a
thread refreshes the file every few seconds. A second run on the same workdir stops at once
with a message naming the holder. A lock whose holder is dead (same host: no such pid;
another host: not refreshed for `STALE_AFTER_S`) is taken over, so a killed run restarts
with the same command. On a multi-process run process 0 holds the lock for all processes.

On object storage (`gs://`) the lock is an object written with generation preconditions: it is
created only if absent, refreshed and taken over only if still the generation last seen, and
deleted only if still ours, so two runs can never both hold it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import socket
import sys
import threading
import time

from srit_jax import places

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


def _object_is_stale(holder: dict | None, age: float) -> bool:
  same_host = holder is not None and holder.get("host") == socket.gethostname()
  return not _alive(int(holder.get("pid", -1))) if same_host else age > STALE_AFTER_S


class _LockObject:
  """The lock as an object on Cloud Storage, every change conditional on its generation."""

  def __init__(self, path):
    from google.api_core import exceptions
    from google.cloud import storage

    self.path, self._errors = path, exceptions
    bucket, _, key = str(path).removeprefix("gs://").partition("/")
    self._blob = storage.Client().bucket(bucket).blob(key)
    self.generation: int | None = None  # of the version this process wrote last

  def write(self, text: str, *, if_generation: int) -> bool:
    """Writes `text` if the object's generation is `if_generation` (0: absent); whether it did."""
    try:
      self._blob.upload_from_string(text, if_generation_match=if_generation)
    except self._errors.PreconditionFailed:
      return False
    self.generation = self._blob.generation
    return True

  def read(self) -> tuple[dict | None, int, float] | None:
    """(holder, generation, age in seconds) of the object, or None when there is none."""
    exceptions = self._errors
    try:
      blob = self._blob.bucket.get_blob(self._blob.name)
      if blob is None:
        return None
      text = blob.download_as_text(if_generation_match=blob.generation)
    except (exceptions.NotFound, exceptions.PreconditionFailed):
      return None
    try:
      holder = json.loads(text)
    except ValueError:
      holder = None
    age = (datetime.datetime.now(datetime.UTC) - blob.updated).total_seconds()
    return holder, blob.generation, age

  def delete(self) -> None:
    with contextlib.suppress(self._errors.NotFound, self._errors.PreconditionFailed):
      self._blob.delete(if_generation_match=self.generation)


class WorkdirLock:
  def __init__(self, workdir: str | pathlib.Path, name: str = LOCK_NAME):
    self.path = places.as_path(workdir) / name
    self._token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
    self._since = time.strftime("%Y-%m-%d %H:%M:%S")
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._object = _LockObject(self.path) if places.is_remote(self.path) else None
    self._made_folder = False  # the lock made the workdir: released empty, it goes too

  def _record(self) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": self._since, "token": self._token})

  def _try_create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(self._record())
    return True

  def _refused(self, holder: dict | None) -> WorkdirLockedError:
    who = f"pid {holder['pid']} on host {holder['host']} since {holder['since']}" if holder else "another run"
    return WorkdirLockedError(
      f"{self.path.parent}: in use by {who} (lock file {self.path}); wait for that run to end, or use another --workdir"
    )

  def _acquire_object(self) -> None:
    lock = self._object
    while not lock.write(self._record(), if_generation=0):
      found = lock.read()
      if found is None:
        continue  # released in between: try again
      holder, generation, age = found
      if not _object_is_stale(holder, age):
        raise self._refused(holder)
      if lock.write(self._record(), if_generation=generation):
        return  # taken over from a holder that is gone
      raise WorkdirLockedError(f"{self.path.parent}: another run took over the stale lock {self.path} first")

  def acquire(self) -> None:
    if self._object is not None:
      self._acquire_object()
    else:
      self._acquire_file()
    self._thread = threading.Thread(target=self._refresh, daemon=True, name="workdir-lock")
    self._thread.start()

  def _acquire_file(self) -> None:
    self._made_folder = not self.path.parent.exists()
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if not self._try_create():
      holder = _holder(self.path)
      if not _is_stale(self.path, holder):
        raise self._refused(holder)
      # The holder is gone: take over. Write ours beside and rename, then check that we won a race.
      partial = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}")
      partial.write_text(self._record(), encoding="utf-8")
      partial.replace(self.path)
      time.sleep(0.05)
      if (_holder(self.path) or {}).get("token") != self._token:
        raise WorkdirLockedError(f"{self.path.parent}: another run took over the stale lock {self.path} first")

  def _refresh(self) -> None:
    while not self._stop.wait(REFRESH_S):
      if self._object is not None:
        with contextlib.suppress(Exception):  # a failed refresh is retried; the lock goes stale only after a minute
          if not self._object.write(self._record(), if_generation=self._object.generation):
            print(f"warning: the workdir lock {self.path} was taken over by another run", file=sys.stderr)
            return
      else:
        with contextlib.suppress(OSError):
          os.utime(self.path)

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      if self._object is not None:
        self._object.delete()
      elif (_holder(self.path) or {}).get("token") == self._token:
        self.path.unlink(missing_ok=True)
        if self._made_folder:
          with contextlib.suppress(OSError):  # not empty: the run wrote something
            self.path.parent.rmdir()


def live_holder(workdir: str | pathlib.Path, name: str = LOCK_NAME) -> dict | None:
  """The record of the live run that holds `workdir` (its host, pid and start), {} where the lock
  cannot be read yet, or None where no live run holds it (no lock, or a holder that is gone)."""
  path = places.as_path(workdir) / name
  if places.is_remote(path):
    found = _LockObject(path).read()
    if found is None:
      return None
    holder, _, age = found
    return None if _object_is_stale(holder, age) else holder or {}
  if not path.exists():
    return None
  holder = _holder(path)
  return None if _is_stale(path, holder) else holder or {}


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
      error = f"{workdir}: in use by another run (see {lock.path})"
  if error:
    raise WorkdirLockedError(error)
  try:
    yield lock
  finally:
    lock.release()
