"""Files of a run directory: atomic writes, resumable appends, reads that name file, line and field.

A run directory, a model or a data file may be local or on object storage (`gs://BUCKET/...`):
`as_path()` gives a `pathlib.Path` for a local one and an `etils.epath.Path` for a URL, and every
write below does what is safe where it lands. An object is only ever seen whole once written, so
remote writes need no rename (a rename there is a copy and a delete); a remote append composes
each batch onto the object's end; models and adapters are read from a local copy
(`host_cache.local_copy`) and exports staged locally, then uploaded (`host_cache.staged`).

On a multi-process run (a TPU pod) every process runs the same code over one shared workdir.
Every file is written by exactly one process, process 0 (`is_writer()`); the others compute
the same values and wait at a `barrier` wherever they are about to read what it wrote.

- `write_json` / `write_jsonl` / `write_text`: written beside the target and renamed into
  place, so a kill never leaves half a file.
- `JsonlAppender`: whole batches of lines, flushed and synced together; `complete_lines`
  drops a last line that a kill cut short, so a resumed run can trust what it finds.
- `read_records`: the objects of a JSON Lines file or a JSON list, each error naming file:line
  and field.
- `to_host`: a (possibly multi-host) array as one NumPy array on every process.
- `as_path` / `is_remote`: local and `gs://` places alike.
- `link_files` / `link_tree`: files or a folder of another run taken over as hard links (copies on
  object storage), never written through: whoever changes such a file writes a new one in its place.
- `writing(what, path)`: a failed write (a full disk, a missing permission, a bucket over
  quota) becomes one `WriteError` naming what, where and the system's reason in plain words.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from srit_jax.places import as_path, files_under, is_remote, size  # noqa: F401 (the run's one path layer)


class DataError(ValueError):
  """A file that cannot be used as it is; the message names the file, line and field."""


def read_text(path: str | pathlib.Path) -> str:
  """A UTF-8 text file; bytes that are not UTF-8 are named by line and column."""
  path = as_path(path)
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  data = path.read_bytes()
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    raise DataError(f"{path}:{line}: bytes that are not UTF-8 at column {column}") from None


def read_rows(path: str | pathlib.Path) -> Iterator[tuple[int, dict]]:
  """(line, row) for every object of a JSON list or a JSON Lines file, whichever it holds."""
  path = as_path(path)
  text = read_text(path)
  decoder = json.JSONDecoder()
  stripped = text.lstrip()
  if stripped.startswith("["):
    position = len(text) - len(stripped) + 1
    line, counted = 1, 0  # `line` is the line of offset `counted`

    def line_at(offset):
      nonlocal line, counted
      line += text.count("\n", counted, offset)
      counted = offset
      return line

    while True:
      position = _skip(text, position, " \t\r\n")
      if position < len(text) and text[position] == "]":
        return
      start_line = line_at(position)
      try:
        row, position = decoder.raw_decode(text, position)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_at(e.pos)}: not valid JSON ({e.msg})") from None
      yield start_line, _object(row, path, start_line)
      position = _skip(text, position, " \t\r\n")
      if position < len(text) and text[position] == ",":
        position += 1
      elif position >= len(text) or text[position] != "]":
        raise DataError(f"{path}:{line_at(position)}: expected ',' or ']' between list items")
  else:
    for line, raw in enumerate(text.split("\n"), start=1):
      if not raw.strip():
        continue
      try:
        row = json.loads(raw)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line}: not valid JSON ({e.msg} at column {e.colno})") from None
      yield line, _object(row, path, line)


def _skip(text: str, position: int, characters: str) -> int:
  while position < len(text) and text[position] in characters:
    position += 1
  return position


def _object(row: Any, path, line) -> dict:
  if not isinstance(row, dict):
    raise DataError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
  return row


def is_writer() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """All processes meet here (a no-op on one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


class WriteError(ValueError):
  """A file could not be written; the message names what, where and why, in one line."""


_REASONS = (  # what libraries (TensorStore, gcsfs) say, in the operating system's words
  ("No space left", "no space left on device"),
  ("RESOURCE_EXHAUSTED", "no space left on device (or a quota exhausted)"),
  ("Permission denied", "permission denied"),
  ("PERMISSION_DENIED", "permission denied"),
  ("Read-only file system", "read-only file system"),
  ("Disk quota exceeded", "disk quota exceeded"),
)


def os_reason(error: BaseException) -> str:
  """Why a write failed, in plain words: the OS error's own text where there is one."""
  if isinstance(error, OSError) and error.errno:
    return os.strerror(error.errno).lower()
  text = str(error)
  code = re.search(r"os_error_code='?(\d+)|os error (\d+)", text)
  if code:
    return os.strerror(int(code.group(1) or code.group(2))).lower()
  for marker, words in _REASONS:
    if marker in text:
      return words
  return (text.strip().splitlines() or [type(error).__name__])[0][:200]


@contextlib.contextmanager
def writing(what: str, path, also: tuple[type[BaseException], ...] = ()):
  """Turns a failed write inside the block (an OSError, or one of `also`: a library's own error
  type for what the system refused) into a WriteError: 'could not write <what> <path>: <reason>'."""
  try:
    yield
  except (OSError, *also) as e:
    raise WriteError(f"could not write {what} {path}: {os_reason(e)}") from e


def _atomic_write(path: pathlib.Path, write, *, binary: bool = False) -> None:
  mode, encoding = ("wb", None) if binary else ("w", "utf-8")
  with writing("the file", path):
    if is_remote(path):  # an object is seen only once whole: written in one request, no rename
      with path.open(mode, encoding=encoding) as f:
        write(f)
      return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, mode, encoding=encoding) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    partial.replace(path)


def write_text(path: str | pathlib.Path, text: str) -> None:
  """`text` to `path` atomically, by the writing process only."""
  if is_writer():
    _atomic_write(as_path(path), lambda f: f.write(text))


def write_bytes(path: str | pathlib.Path, data: bytes) -> None:
  """`data` to `path` atomically, by the writing process only."""
  if is_writer():
    _atomic_write(as_path(path), lambda f: f.write(data), binary=True)


def write_json(path: str | pathlib.Path, obj: Any) -> None:
  """`obj` as indented JSON, atomically, by the writing process only."""
  write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | pathlib.Path, records: Iterable[dict]) -> None:
  """One JSON object per line, atomically, by the writing process only."""
  if is_writer():
    _atomic_write(as_path(path), lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def reset_directory(path: str | pathlib.Path, keep: tuple[str, ...] = ()) -> None:
  """Empties `path` but for the files named in `keep` (by the writing process, once) and makes
  every process wait until it is done."""
  path = as_path(path)
  if is_writer() and path.exists():
    for child in path.iterdir():
      if child.name in keep:
        continue
      if is_remote(child) and child.is_dir():
        child.rmtree()
      elif child.is_dir() and not child.is_symlink():
        shutil.rmtree(child, ignore_errors=True)
      else:
        child.unlink(missing_ok=True)
    if not keep and not is_remote(path):  # object storage has no empty directories
      path.rmdir()
  barrier(f"reset {path}")


def link_files(source: str | pathlib.Path, target: str | pathlib.Path, names: tuple[str, ...]) -> None:
  """Hard links (copies where links cannot be made, and on object storage) in `target` to the
  files of `source` named in `names`, in place of any other file of that name there (a stale one
  kept from an earlier run); by the writing process, once."""
  source, target = as_path(source), as_path(target)
  if is_writer():
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
      if (source / name).exists():
        _link_file(source / name, target / name)
  barrier(f"linked files into {target}")


def link_tree(source: str | pathlib.Path, target: str | pathlib.Path, leave_out: tuple[str, ...] = ()) -> None:
  """`target` made a copy of the folder `source` whose files are hard links to the originals
  (copies where links cannot be made, and on object storage), but for the files and folders at
  the top of `source` named in `leave_out`; by the writing process, once."""
  source, target = as_path(source), as_path(target)
  if is_writer():
    target.mkdir(parents=True, exist_ok=True)
    for path in files_under(source):
      relative = str(path)[len(str(source)) :].lstrip("/")
      if relative.split("/", 1)[0] not in leave_out:
        _link_file(path, target / relative)
  barrier(f"linked {source} into {target}")


def _link_file(source: pathlib.Path, target: pathlib.Path) -> None:
  """`target` a hard link to `source` (a copy where a link cannot be made), in place of any other
  file there."""
  target.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(source) or is_remote(target):
    with writing("a copy to", target):
      source.copy(target, overwrite=True)
    return
  if target.exists():
    if os.path.samefile(source, target):
      return
    target.unlink()
  try:
    os.link(source, target)
  except OSError:
    shutil.copy2(source, target)


def complete_lines(path: str | pathlib.Path) -> list[bytes]:
  """The newline-terminated lines of a file; a last line cut short by a kill is left out."""
  path = as_path(path)
  if not path.exists():
    return []
  return path.read_bytes().split(b"\n")[:-1]


def complete_records(path: str | pathlib.Path) -> list[dict]:
  """The JSON objects of a file's newline-terminated lines (a last line cut short by a kill left
  out); a line that is not a JSON object raises `DataError` naming file and line."""
  records = []
  for number, line in enumerate(complete_lines(path), start=1):
    try:
      record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DataError(f"{path}:{number}: not valid JSON ({e})") from None
    records.append(_object(record, path, number))
  return records


class JsonlAppender:
  """Appends whole batches of JSON lines to a file that holds `keep_lines` trusted lines (its first).

  Opening truncates the file to those lines (what a kill left after them is dropped); each
  `append` writes a batch, flushes and syncs it. Only the writing process touches the file. A
  file hard-linked from elsewhere (a run started from another's finished files) is first made
  a file of its own, so that the other never changes. On object storage, where an object
  cannot grow, each batch is composed onto its end (`ObjectAppender`).
  """

  def __init__(self, path: str | pathlib.Path, keep_lines: Sequence[bytes] = ()):
    self.path = as_path(path)
    self._file = None
    self._object: ObjectAppender | None = None
    if not is_writer():
      return
    if is_remote(self.path):
      self._object = ObjectAppender(self.path, b"".join(line + b"\n" for line in keep_lines))
      return
    with writing("the file", self.path):
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if self.path.exists() and self.path.stat().st_nlink > 1:
        _atomic_write(self.path, lambda f: f.write(self.path.read_text(encoding="utf-8")))
      with open(self.path, "a+b") as f:
        f.truncate(sum(len(line) + 1 for line in keep_lines))
      self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

  def append(self, records: Iterable[dict]) -> None:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    if self._object is not None:
      self._object.append("".join(lines).encode())
      return
    if self._file is None:
      return
    with writing("lines to", self.path):  # what a full disk cut short is dropped at the next start
      self._file.writelines(lines)
      self._file.flush()
      os.fsync(self._file.fileno())

  def close(self) -> None:
    if self._file is not None:
      file, self._file = self._file, None
      with contextlib.suppress(OSError):  # a failed append has said why already
        file.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class ObjectAppender:
  """Appends to an object on object storage, which cannot grow. Each batch is uploaded as an
  object beside it (NAME.append) and composed onto its end (Cloud Storage's compose: one
  request that replaces the object whole, so a kill leaves it with or without the batch), then
  deleted: each append uploads its batch alone, not the object so far. Cloud Storage refuses an
  object of more than 1,024 composed parts: before that the object is rewritten whole (one part
  again). A store without compose gets the object rewritten with every batch."""

  MOST_PARTS = 1024

  def __init__(self, path, trusted: bytes):
    """`path`'s object, cut to its first bytes `trusted` (rewritten only where it holds more)."""
    import fsspec

    self.path = path
    self.fs, self.key = fsspec.core.url_to_fs(str(path))
    self.batch = self.key + ".append"
    self.composes = hasattr(self.fs, "merge")
    self.content = None if self.composes else trusted  # without compose: every line so far
    with writing("lines to", path):
      with contextlib.suppress(FileNotFoundError):
        self.fs.rm_file(self.batch)  # a batch a kill left before it was appended
      try:
        info = self.fs.info(self.key)
      except FileNotFoundError:
        info = None
      if info is not None and info["size"] == len(trusted):
        self.parts = int(info.get("componentCount", 1))
      else:
        self.fs.pipe_file(self.key, trusted)
        self.parts = 1

  def append(self, data: bytes) -> None:
    with writing("lines to", self.path):
      if not self.composes:
        self.content += data
        self.fs.pipe_file(self.key, self.content)
      elif self.parts + 1 >= self.MOST_PARTS:
        self.fs.pipe_file(self.key, self.fs.cat_file(self.key) + data)
        self.parts = 1
      else:
        self.fs.pipe_file(self.batch, data)
        self.fs.merge(self.key, [self.key, self.batch])
        self.fs.rm_file(self.batch)
        self.parts += 1


def read_records(
  path: str | pathlib.Path, *, required: dict[str, type | tuple[type, ...]] | None = None
) -> list[tuple[int, dict]]:
  """(line, object) for every object of a JSON Lines file or a JSON list.

  `required` maps field names to the types they must have (a str field must also be
  non-empty). Encoding errors, items that are not JSON objects and missing or mistyped
  fields raise `DataError` naming file:line and field.
  """
  rows = []
  for line, obj in read_rows(path):
    for field, kind in (required or {}).items():
      check_field(obj, field, kind, f"{path}:{line}")
    rows.append((line, obj))
  return rows


def check_field(obj: dict, field: str, kind: type | tuple[type, ...], where: str) -> None:
  """Raises `DataError` naming `where` and `field` unless obj[field] has type `kind`."""
  if field not in obj or obj[field] is None:
    raise DataError(f"{where}: field {field!r} is missing")
  value = obj[field]
  kinds = kind if isinstance(kind, tuple) else (kind,)
  if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
    names = " or ".join(k.__name__ for k in kinds)
    raise DataError(f"{where}: field {field!r} must be {names}, got {type(value).__name__}")
  if isinstance(value, str) and not value.strip():
    raise DataError(f"{where}: field {field!r} is empty")


def to_host(x: jax.Array) -> np.ndarray:
  """A (possibly multi-host) array as one NumPy array on this process."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))
