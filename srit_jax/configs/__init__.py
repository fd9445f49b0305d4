"""Run configs: one `get_config(variant)` file per command, every field commented.

Each file is loaded by path on the command line (`--config=configs/sft.py:tiny`) and is also
a module of this package, so configs build on one another by import. `variants` is the one
parser of the ":variant" suffix; `load` gives a config as the command line would.
"""

from __future__ import annotations

import functools
import importlib
import pathlib
import tokenize
from collections.abc import Sequence


class UnknownVariantError(ValueError):
  """A ":variant" that the config file does not define."""


def variants(arg: str, config_file: str, *axes: Sequence[str]) -> tuple[str, ...]:
  """The comma-separated parts of `arg`, one per axis, each checked against the axis's values.

  An empty part takes the axis's first value (its default). `config_file` (the config
  module's `__file__`) names the file in the error, which lists every allowed value.
  """
  name = pathlib.Path(config_file).stem
  parts = arg.split(",") if arg else []
  if len(parts) > len(axes):
    raise UnknownVariantError(f"configs/{name}.py: variant {arg!r} has {len(parts)} parts; it takes {len(axes)}")
  chosen = []
  for i, allowed in enumerate(axes):
    part = parts[i].strip() if i < len(parts) else ""
    value = part or allowed[0]
    if value not in allowed:
      shown = ", ".join(repr(a) if a else "'' (the default)" for a in allowed)
      raise UnknownVariantError(f"configs/{name}.py: unknown variant {part!r}; variants: {shown}")
    chosen.append(value)
  return tuple(chosen)


def load(name: str, variant: str = ""):
  """configs/<name>.py's config for `variant`, as `--config=configs/<name>.py:<variant>` gives it."""
  module = importlib.import_module(f"srit_jax.configs.{name}")
  return module.get_config(variant) if variant else module.get_config()


def _comments_of(path: pathlib.Path) -> dict[str, str]:
  """{field path: comment} of `config.a.b = value  # comment` lines in a config file.

  A field assigned on a variable other than `config` (a block built by a helper, such as
  `teacher.kind`) keeps that variable's name as its first part.
  """
  comments = {}
  with open(path, encoding="utf-8") as f:
    tokens = list(tokenize.generate_tokens(f.readline))
  line: list[tokenize.TokenInfo] = []
  for token in tokens:
    if token.type in (tokenize.NEWLINE, tokenize.NL):
      line = []
      continue
    if token.type == tokenize.COMMENT and line:
      names = []
      for t in line:
        if t.type == tokenize.NAME or (t.type == tokenize.OP and t.string == "."):
          names.append(t.string)
          continue
        if t.type == tokenize.OP and t.string == "=" and len(names) >= 3:
          target = "".join(names).split(".")
          key = ".".join(target[1:] if target[0] == "config" else target)
          comments.setdefault(key, token.string.lstrip("# ").strip())
        break
      continue
    line.append(token)
  return comments


@functools.cache
def _all_comments() -> dict[str, dict[str, str]]:
  return {p.stem: _comments_of(p) for p in sorted(pathlib.Path(__file__).parent.glob("*.py"))}


def field_comment(path: str, config_name: str) -> str:
  """The comment that documents field `path` of configs/<config_name>.py (or a file it builds on)."""
  comments = _all_comments()
  parts = path.split(".")
  if path in comments.get(config_name, {}):
    return comments[config_name][path]
  for i in range(1, len(parts)):  # "sft.optimizer.learning_rate": sft.py, then optimizer.py
    rest = ".".join(parts[i:])
    if rest in comments.get(parts[i - 1], {}):
      return comments[parts[i - 1]][rest]
  found = next((c[path] for c in comments.values() if path in c), "")
  if not found and len(parts) > 1:  # "mesh.data": the comment of its block
    return field_comment(".".join(parts[:-1]), config_name)
  return found


def fields(config, config_name: str) -> list[tuple[str, object, str]]:
  """(path, value, comment) of every field of a config, in definition order."""

  def walk(block, prefix):
    for key, value in block.items():
      path = f"{prefix}{key}"
      if hasattr(value, "items"):
        yield from walk(value, path + ".")
      else:
        yield path, value, field_comment(path, config_name)

  return list(walk(config, ""))
