"""Run configs: one `get_config(variant)` file per command, every field commented.

Each file is loaded by path on the command line (`--config=configs/sft.py:tiny`) and is also
a module of this package, so configs build on one another by import. `variants` is the one
parser of the ":variant" suffix; `load` gives a config as the command line would.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence


class UnknownVariantError(ValueError):
  """A ":variant" that the config file does not define."""


def variants(arg: str, name: str, *axes: Sequence[str]) -> tuple[str, ...]:
  """The comma-separated parts of `arg`, one per axis, each checked against the axis's values.

  An empty part takes the axis's first value (its default). `name` names the config file
  in the error, which lists every allowed value.
  """
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
