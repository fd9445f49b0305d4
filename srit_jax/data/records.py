"""Instruction records (instruction, input, output) read from JSONL, with errors that name
the file, the line and the field — or, with `skip_bad_records`, skipped and counted."""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib

from srit_jax import io


class RecordError(ValueError):
  """A malformed record; the message names file, line and field."""


@dataclasses.dataclass(frozen=True)
class InstructionRecord:
  instruction: str
  input: str
  output: str
  source: str  # "file:line", for messages about this record


@dataclasses.dataclass
class ReadReport:
  read: int = 0
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)


def _check_text(value, path, number, field, required):
  if value is None:
    if required:
      raise RecordError(f"{path}:{number}: field {field!r} is missing")
    return ""
  if not isinstance(value, str):
    raise RecordError(f"{path}:{number}: field {field!r} must be a string, got {type(value).__name__}")
  if required and not value.strip():
    raise RecordError(f"{path}:{number}: field {field!r} is empty")
  return value


def read_instruction_records(
  path: str | pathlib.Path, *, skip_bad_records: bool = False, report: ReadReport | None = None
) -> list[InstructionRecord]:
  """Records of a JSONL file; `output` and `instruction` are required, `input` optional."""
  path = io.as_path(path)
  report = report if report is not None else ReadReport()
  records = []
  with path.open("rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise RecordError(f"{path}:{number}: bytes that are not UTF-8 at column {e.start + 1}") from None
        if not line.strip():
          continue
        try:
          obj = json.loads(line)
        except json.JSONDecodeError as e:
          raise RecordError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
          raise RecordError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        records.append(
          InstructionRecord(
            instruction=_check_text(obj.get("instruction"), path, number, "instruction", True),
            input=_check_text(obj.get("input"), path, number, "input", False),
            output=_check_text(obj.get("output"), path, number, "output", True),
            source=f"{path}:{number}",
          )
        )
        report.read += 1
      except RecordError as e:
        if not skip_bad_records:
          raise
        report.skipped[str(e).split(": ", 1)[1]] += 1
  return records


# Fields of a demos.jsonl line (the demos phase's output) and the types they must have.
DEMONSTRATION_FIELDS = {
  "task": str,
  "id": (str, int),
  "question": str,
  "gold": str,
  "answer_type": str,
  "choices": list,
  "output": str,
}


def read_demonstrations(path: str | pathlib.Path, fields=tuple(DEMONSTRATION_FIELDS)) -> list[dict]:
  """The lines of a demos.jsonl file, each with `fields`; a missing or mistyped field names
  file, line and field."""
  return [obj for _, obj in io.read_records(path, required={f: DEMONSTRATION_FIELDS[f] for f in fields})]
