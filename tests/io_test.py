"""File I/O of runs: appends that survive kills, and runs started from another run's files."""

import os

from srit_jax import io


def test_an_appender_cuts_what_a_kill_left_and_keeps_the_trusted_lines(tmp_path):
  path = tmp_path / "samples.jsonl"
  path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "cut')
  lines = io.complete_lines(path)
  assert lines == [b'{"a": 1}', b'{"a": 2}']
  with io.JsonlAppender(path, keep_lines=lines[:1]) as appender:
    appender.append([{"a": 9}])
  assert path.read_text() == '{"a": 1}\n{"a": 9}\n'


def test_linked_files_are_shared_until_one_side_appends(tmp_path):
  source, target = tmp_path / "base", tmp_path / "variant"
  source.mkdir()
  (source / "samples.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
  (source / "other.json").write_text("{}\n")
  io.link_files(source, target, ("samples.jsonl", "missing.jsonl"))
  assert sorted(p.name for p in target.iterdir()) == ["samples.jsonl"]
  assert os.stat(target / "samples.jsonl").st_ino == os.stat(source / "samples.jsonl").st_ino
  # Starting the variant's file over must not touch the run it was linked from.
  with io.JsonlAppender(target / "samples.jsonl", keep_lines=[]) as appender:
    appender.append([{"b": 1}])
  assert (source / "samples.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'
  assert (target / "samples.jsonl").read_text() == '{"b": 1}\n'
