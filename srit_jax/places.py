"""Places of files: local paths and URLs of object storage (`gs://BUCKET/...`) alike.

`as_path` gives a `pathlib.Path` for a local place and an `etils.epath.Path` (the same methods)
for a URL. Imports nothing heavy: the workdir lock uses it before JAX is loaded.
"""

from __future__ import annotations

import pathlib
import re

_URL = re.compile(r"[a-z][a-z0-9+.-]*://")


def is_remote(place) -> bool:
  """Whether `place` is a URL (`gs://BUCKET/...`) rather than a local path."""
  return _URL.match(str(place)) is not None


def as_path(place) -> pathlib.Path:
  """`place` as a path object: `pathlib.Path` when local, `etils.epath.Path` for a URL (with the
  same methods; `gs://` needs the gcs extra)."""
  if not is_remote(place):
    return pathlib.Path(place)
  import fsspec
  from etils import epath

  # No listing cache: another process (of a pod, or a later phase) may have written since.
  fsspec.config.conf.setdefault("gs", {}).setdefault("cache_timeout", 0)
  return epath.Path(str(place))


def files_under(directory) -> list:
  """Every file below a directory, local or remote, sorted."""
  if not is_remote(directory):
    return sorted(p for p in directory.rglob("*") if p.is_file())
  scheme = str(directory).split("://", 1)[0]
  files = []
  for root, _, names in directory.walk():  # fsspec names the directories without their scheme
    root = as_path(str(root) if is_remote(root) else f"{scheme}://{root}")
    files += [root / name for name in names]
  return sorted(files, key=str)


def size(file) -> int:
  """The size of a file in bytes, local or remote."""
  stat = file.stat()
  return stat.st_size if hasattr(stat, "st_size") else stat.length
