"""File I/O of runs: appends that survive kills, and runs started from another run's files."""

import json
import os

import pytest

from srit_jax import io


def test_an_appender_cuts_what_a_kill_left_and_keeps_the_trusted_lines(tmp_path):
  path = tmp_path / "samples.jsonl"
  path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "cut')
  lines = io.complete_lines(path)
  assert lines == [b'{"a": 1}', b'{"a": 2}']
  with io.JsonlAppender(path, keep_lines=lines[:1]) as appender:
    appender.append([{"a": 9}])
  assert path.read_text() == '{"a": 1}\n{"a": 9}\n'


def test_a_store_without_compose_gets_the_object_rewritten_with_every_batch():
  import fsspec

  fs = fsspec.filesystem("memory")
  assert not hasattr(fs, "merge")
  fs.pipe_file("/run/samples.jsonl", b"1\n2\n3\n")
  appender = io.ObjectAppender("memory://run/samples.jsonl", b"1\n")  # the trusted line kept
  appender.append(b"4\n")
  appender.append(b"5\n")
  assert fs.cat_file("/run/samples.jsonl") == b"1\n4\n5\n"


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
  # Linked again (a control whose kept samples came from a run with other settings): the source's.
  io.link_files(source, target, ("samples.jsonl",))
  assert os.stat(target / "samples.jsonl").st_ino == os.stat(source / "samples.jsonl").st_ino


def _events(directory):
  """Every TensorBoard event in the event files of `directory`, in order (TFRecord framing)."""
  import struct

  from tensorboardX.proto.event_pb2 import Event

  events = []
  for file in sorted(directory.glob("events.out.tfevents.*")):
    data, offset = file.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack("Q", data[offset : offset + 8])
      events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
      offset += 12 + length + 4
  return events


def test_metric_writer_writes_each_steps_scalars_as_tensorboard_events_and_hides_what_a_resume_redoes(tmp_path):
  from srit_jax.training import metrics

  writer = metrics.MetricWriter(tmp_path)
  for step in (1, 2, 3):
    writer.write(step, {"loss": 1.0 / step, "grad_norm": 2.0})
  writer.close()
  resumed = metrics.MetricWriter(tmp_path, resume_step=2)  # step 3 is redone
  resumed.write(3, {"loss": 0.25, "grad_norm": 2.0})
  resumed.close()
  events = _events(tmp_path / "tensorboard")
  scalars = [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in events if e.summary.value]
  assert scalars == [
    (1, {"loss": 1.0, "grad_norm": 2.0}),
    (2, {"loss": 0.5, "grad_norm": 2.0}),
    (3, {"loss": pytest.approx(1.0 / 3), "grad_norm": 2.0}),  # float32 in the event
    (3, {"loss": 0.25, "grad_norm": 2.0}),
  ]
  # Each run marks where it starts: TensorBoard drops the first run's step 3 at the second's mark.
  starts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
  assert starts == [1, 3]
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in lines] == [1, 2, 3] and lines[-1]["loss"] == 0.25
