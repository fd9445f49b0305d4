"""The wall time of a pipeline phase over its attempts: a stopped attempt counts up to its last
write, the time between attempts not at all."""

import json
import os

from srit_jax.phases import phase_time


def test_a_phase_resumed_after_a_kill_counts_each_attempt_up_to_its_last_write(tmp_path, monkeypatch):
  clock = iter([1000.0, 5000.0, 5100.0])  # the first start, the second start, the finish
  monkeypatch.setattr(phase_time.time, "time", lambda: next(clock))
  folder = tmp_path / "sft"
  phase_time.start_attempt(folder)
  (folder / "checkpoints").mkdir()
  saved = folder / "checkpoints" / "state"
  saved.write_text("step 20")
  os.utime(saved, (1300.0, 1300.0))  # the killed attempt's last write, 300 s after its start
  phase_time.start_attempt(folder)  # the next attempt, an hour later
  took = phase_time.finish_attempt(folder)
  assert took == {"seconds": 300.0 + 100.0, "attempts": 2}  # not the hour between them
  attempts = json.loads((folder / phase_time.ATTEMPTS).read_text())
  assert attempts[0] == {"started": 1000.0, "ended": 1300.0, "stopped": True}
  assert attempts[1] == {"started": 5000.0, "ended": 5100.0}


def test_an_attempt_stopped_before_it_wrote_anything_counts_nothing(tmp_path, monkeypatch):
  clock = iter([10.0, 50.0, 60.0])
  monkeypatch.setattr(phase_time.time, "time", lambda: next(clock))
  phase_time.start_attempt(tmp_path)
  phase_time.start_attempt(tmp_path)
  assert phase_time.finish_attempt(tmp_path) == {"seconds": 10.0, "attempts": 2}


def test_a_phase_without_recorded_attempts_reports_no_time(tmp_path):
  assert phase_time.finish_attempt(tmp_path) == {}


def test_durations_read_in_seconds_minutes_or_hours():
  assert [phase_time.duration(s) for s in (42, 600, 9000)] == ["42 s", "10 min", "2.5 h"]
