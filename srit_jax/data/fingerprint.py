"""Fingerprints of what an output was made from, so that no output is reused for other inputs.

Values are hashed as canonical JSON. Paths inside a run directory are hashed relative to it
and files by content, so a finished workdir copied elsewhere keeps its fingerprints. Large
files (model weights) are hashed by their size and a few sampled blocks: fast, content-based,
and changed by any re-export.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

from srit_jax import io

_BLOCK = 1 << 20  # bytes per sampled block
_SAMPLES = 8  # blocks sampled across a large file


# Settings added after runs were made, at the value that leaves a phase as it was: left out of
# fingerprints there, so that a run made (or checkpointed) before they existed is still found
# done (or resumed). By config block: "" holds those of every block; a block's own are those it
# gained after another block had them (SFT's held-out selection, long in refine's fingerprints).
NEUTRAL_SETTINGS = {
  "": {
    "sampling_seed": 0,
    "early_stopping_patience": 0,
    "simpo_gamma": 0.5,
    "heldout_questions": 0,
    "dpop_lambda": 50.0,
    "selection_loss_type": "",
  },
  "sft": {"heldout_fraction": 0.0, "select_checkpoint": "last", "num_epochs": 0.0},
  "eval": {"sampled_answers": 0, "temperature": 0.7, "top_p": 1.0, "paired_with": "", "num_shots": 0},
}


def fingerprinted(settings: dict, block: str = "") -> dict:
  """`settings` (config block `block` as a dict) as fingerprints read them: neutral settings left out."""
  neutral = {**NEUTRAL_SETTINGS[""], **NEUTRAL_SETTINGS.get(block, {})}
  return {k: v for k, v in settings.items() if k not in neutral or v != neutral[k]}


def digest(*parts: Any) -> str:
  """A short hex digest of JSON-serialisable parts (sets and tuples as lists, other objects by str)."""
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=_jsonable).encode()).hexdigest()[:16]


def _jsonable(obj):
  if isinstance(obj, set | frozenset):
    return sorted(obj, key=str)
  return str(obj)


def file_digest(path: str | pathlib.Path) -> str:
  """Content digest of a file: whole below 8 MiB, else its size and 8 sampled 1 MiB blocks."""
  path = io.as_path(path)
  size = io.size(path)
  h = hashlib.sha256(str(size).encode())
  with path.open("rb") as f:
    if size <= _SAMPLES * _BLOCK:
      h.update(f.read())
    else:
      for i in range(_SAMPLES):
        f.seek((size - _BLOCK) * i // (_SAMPLES - 1))
        h.update(f.read(_BLOCK))
  return h.hexdigest()[:16]


def source_digest(source: str | pathlib.Path) -> str:
  """What a model or data source is: a file or directory by content, anything else by its name."""
  path = io.as_path(str(source))
  if path.is_file():
    return file_digest(path)
  if path.is_dir():
    files = [p for p in io.files_under(path) if not p.name.startswith(".")]
    return digest({str(p.relative_to(path)): file_digest(p) for p in files})
  return digest(str(source))


def portable(value: Any, root: str | pathlib.Path) -> Any:
  """`value` with every string that is a path under `root` made relative to it (recursively)."""
  root = _absolute(root)
  if isinstance(value, dict):
    return {k: portable(v, root) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [portable(v, root) for v in value]
  if isinstance(value, str) and value:
    absolute = _absolute(value)
    if absolute == root or absolute.startswith(root + "/"):
      return "$WORKDIR" + absolute[len(root) :]
  return value


def _absolute(place) -> str:
  return str(place).rstrip("/") if io.is_remote(place) else str(pathlib.Path(place).absolute())
