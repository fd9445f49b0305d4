"""Rows of JSON lists, JSON Lines and CSV files with the line each starts on, and field access
whose errors name the file, the line and the field."""

from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Iterator
from typing import Any


class DataError(ValueError):
  """A malformed data file or row; the message names file, line and field."""


def read_rows(path: str | pathlib.Path) -> Iterator[tuple[int, dict]]:
  """(line, row) for every object of a JSON list or a JSON Lines file, whichever it holds."""
  path = pathlib.Path(path)
  if not path.exists():
    raise DataError(f"{path}: no such file")
  try:
    text = path.read_bytes().decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: bytes that are not UTF-8 at offset {e.start}") from None
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


def read_csv_rows(path: str | pathlib.Path) -> Iterator[tuple[int, dict]]:
  path = pathlib.Path(path)
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f)
    start = 2
    for row in reader:
      yield start, row
      start = reader.line_num + 1


def _skip(text: str, position: int, characters: str) -> int:
  while position < len(text) and text[position] in characters:
    position += 1
  return position


def _object(row: Any, path, line) -> dict:
  if not isinstance(row, dict):
    raise DataError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
  return row


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
