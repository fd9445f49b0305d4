"""An append-only JSONL cache of teacher answers, keyed by (teacher, prompt, sample index), safe to
share between threads; a line cut short by a kill is ignored on the next start."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import threading


def cache_key(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


class AnswerCache:
  def __init__(self, path: str | pathlib.Path | None):
    self.path = pathlib.Path(path) if path else None
    self._answers: dict[str, str] = {}
    self._lock = threading.Lock()
    if self.path and self.path.exists():
      for line in self.path.read_bytes().split(b"\n"):
        try:
          entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
          continue  # empty, or the last line of a killed run
        self._answers[entry["key"]] = entry["text"]

  def __contains__(self, key: str) -> bool:
    return key in self._answers

  def __len__(self) -> int:
    return len(self._answers)

  def get(self, key: str) -> str | None:
    return self._answers.get(key)

  def put(self, key: str, text: str, **details) -> None:
    with self._lock:
      self._answers[key] = text
      if self.path is None:
        return
      self.path.parent.mkdir(parents=True, exist_ok=True)
      with open(self.path, "a", encoding="utf-8") as f:
        if f.tell() and not self._ends_with_newline():
          f.write("\n")  # after a line cut short by a kill
        f.write(json.dumps({"key": key, "text": text, **details}, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())

  def _ends_with_newline(self) -> bool:
    with open(self.path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      return f.read(1) == b"\n"
