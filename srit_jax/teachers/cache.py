"""An append-only JSONL cache of teacher answers, keyed by (teacher, prompt, sample index), safe to
share between threads; a line cut short by a kill is ignored on the next start."""

from __future__ import annotations

import hashlib
import json
import pathlib
import threading

from srit_jax import io


def cache_key(*parts) -> str:
  return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


class AnswerCache:
  def __init__(self, path: str | pathlib.Path | None):
    self.path = io.as_path(path) if path else None
    self._answers: dict[str, str] = {}
    self._lock = threading.Lock()
    self._appender = None
    if self.path is None:
      return
    lines, kept = io.complete_lines(self.path), []
    for line in lines:
      try:
        entry = json.loads(line)
      except (json.JSONDecodeError, UnicodeDecodeError):
        continue  # a line a killed run cut short
      self._answers[entry["key"]] = entry["text"]
      kept.append(line)
    if len(kept) < len(lines):  # a cut line amid whole ones: the file without it
      io.write_text(self.path, "".join(line.decode() + "\n" for line in kept))
    self._appender = io.JsonlAppender(self.path, keep_lines=kept)

  def __contains__(self, key: str) -> bool:
    return key in self._answers

  def __len__(self) -> int:
    return len(self._answers)

  def get(self, key: str) -> str | None:
    return self._answers.get(key)

  def put(self, key: str, text: str, **details) -> None:
    with self._lock:
      self._answers[key] = text
      if self._appender is not None:
        self._appender.append([{"key": key, "text": text, **details}])
