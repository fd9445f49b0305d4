"""This host's cache: fetched models, local copies of remote files, compiled programs.

A model or an adapter on object storage (`gs://BUCKET/...`) is read from a local copy
(`local_copy`), fetched again only when one of its objects changed (each object's version is
kept beside the copy). An export to a remote directory is written in a local directory first and
uploaded when it is whole (`staged`), the local files kept as the cache's copy. The cache lives
under `SRIT_JAX_CACHE` (default `~/.cache/srit_jax`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

from srit_jax.io import is_writer, writing
from srit_jax.places import as_path, is_remote


def cache_root() -> pathlib.Path:
  """This host's cache: fetched models, local copies of remote ones (`SRIT_JAX_CACHE`)."""
  return pathlib.Path(os.environ.get("SRIT_JAX_CACHE", pathlib.Path.home() / ".cache" / "srit_jax"))


def compilation_cache_dir() -> pathlib.Path:
  """Where the command line keeps compiled programs unless told otherwise (--compilation_cache)."""
  return cache_root() / "xla"


_LISTING = ".remote_listing.json"
_CHUNK = 16 << 20


def _listing(remote) -> dict[str, list]:
  """Every object under a remote directory (or the one object) with its size and version (its
  generation on Cloud Storage: a new one with every write)."""
  import fsspec

  fs, root = fsspec.core.url_to_fs(str(remote))
  found = fs.find(root, detail=True) if fs.isdir(root) else {root: fs.info(root)}
  listing = {}
  for key, info in found.items():
    name = remote.name if key == root else key[len(root) :].lstrip("/")
    version = info.get("generation") or info.get("ETag") or info.get("mtime")
    listing[name] = [int(info["size"]), str(version)]
  return listing


def _cache_entry(remote) -> pathlib.Path:
  return cache_root() / "remote" / hashlib.sha256(str(remote).encode()).hexdigest()[:16]


def local_copy(place) -> pathlib.Path:
  """A local path to read `place` from: itself when local; for a remote file or directory (a
  model, an adapter) a copy in this host's cache, fetched again only when an object changed."""
  if not is_remote(place):
    return pathlib.Path(place)
  remote = as_path(place)
  if not remote.exists():
    raise FileNotFoundError(f"{remote}: no such file or directory")
  entry, listing = _cache_entry(remote), _listing(remote)
  local = entry / remote.name if remote.is_file() else entry
  if (entry / _LISTING).exists() and json.loads((entry / _LISTING).read_text(encoding="utf-8")) == listing:
    return local
  entry.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=entry.parent, prefix=f".{entry.name}-", ignore_cleanup_errors=True) as scratch:
    scratch = pathlib.Path(scratch)
    for name in listing:
      source = remote if remote.is_file() else remote / name
      (scratch / name).parent.mkdir(parents=True, exist_ok=True)
      with source.open("rb") as src, open(scratch / name, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
    _adopt(scratch, entry, listing)
  return local


def _adopt(scratch: pathlib.Path, entry: pathlib.Path, listing: dict) -> None:
  """Makes the files in `scratch` the cache entry `entry` (replacing an older one)."""
  (scratch / _LISTING).write_text(json.dumps(listing), encoding="utf-8")
  stale = entry.with_name(f".{entry.name}-stale-{os.getpid()}")
  with contextlib.suppress(FileNotFoundError):
    entry.rename(stale)
  with contextlib.suppress(OSError):  # another process on this host made it first: theirs is as good
    scratch.rename(entry)
  shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def staged(directory, what: str = "the files to"):
  """A local directory to write `directory`'s files in: `directory` itself when local; for a
  remote one a local directory whose files the writing process uploads there when the block
  ends (kept as the cache's copy, so the next phase does not fetch them again)."""
  if not is_remote(directory):
    yield pathlib.Path(directory)
    return
  remote = as_path(directory)
  entry = _cache_entry(remote)
  entry.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=entry.parent, prefix=f".{entry.name}-", ignore_cleanup_errors=True) as scratch:
    scratch = pathlib.Path(scratch)
    yield scratch
    if is_writer():
      with writing(what, remote):
        for file in sorted(p for p in scratch.rglob("*") if p.is_file()):
          with open(file, "rb") as src, (remote / str(file.relative_to(scratch))).open("wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)
      _adopt(scratch, entry, _listing(remote))
