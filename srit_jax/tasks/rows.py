"""Rows of JSON lists, JSON Lines and CSV files with the line each starts on, and field access
whose errors name the file, the line and the field."""

from __future__ import annotations

import csv
import io as text_io
import pathlib
from collections.abc import Iterator

from srit_jax.io import DataError, read_rows, read_text  # noqa: F401 (the loaders' one reader)


def read_csv_rows(path: str | pathlib.Path) -> Iterator[tuple[int, dict]]:
  with text_io.StringIO(read_text(path), newline="") as f:
    reader = csv.DictReader(f)
    start = 2
    for row in reader:
      yield start, row
      start = reader.line_num + 1


class Row:
  """Typed access to one row's fields; every failure names where the row came from."""

  def __init__(self, row: dict, where: str):
    self.row, self.where = row, where

  def get(self, name: str, kind: type | tuple[type, ...] = str, *, optional: bool = False):
    value = self.row
    for part in name.split("."):
      if not isinstance(value, dict) or part not in value:
        if optional:
          return None
        raise DataError(f"{self.where}: field {name!r} is missing")
      value = value[part]
    if not isinstance(value, kind):
      names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
      raise DataError(f"{self.where}: field {name!r} must be {names}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip() and not optional:
      raise DataError(f"{self.where}: field {name!r} is empty")
    return value

  def fail(self, name: str, message: str):
    raise DataError(f"{self.where}: field {name!r} {message}")
