"""Writes that fail — a full disk, a read-only one — stop the run at once with one line naming
what, where and why; what was saved before stays intact and the same command resumes from it.
The disks are small tmpfs mounts (the tests need the right to mount; elsewhere they skip)."""

import json
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import TEACHER_MATH_FILE, subprocess_env

from srit_jax import io
from srit_jax.conversion import hf_checkpoint
from srit_jax.model import decoder, presets
from srit_jax.training import checkpointing

ROOT = pathlib.Path(__file__).parents[1]


@pytest.fixture
def small_disk(tmp_path):
  """mount(size_kib, *options) -> a tmpfs of that size; unmounted after the test."""
  mounted = []

  def mount(size_kib: int, *options: str) -> pathlib.Path:
    point = tmp_path / f"disk{len(mounted)}"
    point.mkdir()
    flags = ",".join([f"size={size_kib}k", *options])
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", flags, "tmpfs", str(point)], capture_output=True, text=True)
    if result.returncode:
      pytest.skip(f"cannot mount a small disk here: {result.stderr.strip()}")
    mounted.append(point)
    return point

  yield mount
  for point in mounted:
    subprocess.run(["umount", "--lazy", str(point)], check=False)  # detached even while a file is open


def _fill(directory: pathlib.Path, leave_kib: int = 0) -> None:
  """Fills a disk up to `leave_kib` KiB of free space."""
  free = shutil.disk_usage(directory).free // 1024 - leave_kib
  (directory / "filler").write_bytes(b"\0" * max(free, 0) * 1024)


def _sft(model_dir, train_file, workdir, *flags):
  command = [
    sys.executable,
    "-m",
    "srit_jax.cli",
    "sft",
    "--config=configs/sft.py:tiny",
    f"--config.model={model_dir}",
    f"--config.train_file={train_file}",
    "--config.num_steps=40",
    "--config.save_every=5",
    "--config.mesh.fsdp=1",
    f"--workdir={workdir}",
    *flags,
  ]
  env = subprocess_env(1)
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)


def _steps(workdir):
  return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_saved_stops_the_run_in_one_line_and_the_earlier_ones_resume(
  tiny_with_tokenizer, tmp_path, small_disk
):
  rows = json.loads(TEACHER_MATH_FILE.read_text())[:16]
  train_file = tmp_path / "demos.jsonl"
  train_file.write_text(
    "".join(json.dumps({"instruction": r["instruction"], "output": r["output"]}) + "\n" for r in rows)
  )
  # Room for the run's files and three checkpoints of the tiny model, not four. The tiny model's
  # steps take milliseconds, less than a failing background save needs to fail: saved in the
  # step (async_checkpoints=False) the run stops at the very step; asynchronous saves are checked
  # after every step (test_a_failed_background_save_is_reported_without_waiting).
  for name, flags, last_step in (("sync", ["--config.async_checkpoints=False"], 15), ("async", [], 20)):
    disk = small_disk(3072)
    result = _sft(tiny_with_tokenizer, train_file, disk / "run", *flags)
    assert result.returncode == 1, name
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: could not save the checkpoint of step 15 in "), result.stderr[-4000:]
    assert "no space left on device; the checkpoints of steps 10, 5 are intact" in message
    assert "Traceback" not in result.stderr and "ERROR:absl" not in result.stderr
    assert max(_steps(disk / "run")) <= last_step, name  # not the end of the run
  # On a disk with room, the same command resumes from the newest intact checkpoint and finishes.
  shutil.copytree(disk / "run", tmp_path / "run")
  resumed = _sft(tiny_with_tokenizer, train_file, tmp_path / "run")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from the checkpoint of step 10" in resumed.stdout
  assert _steps(tmp_path / "run") == list(range(1, 41))


def test_a_failed_background_save_is_reported_without_waiting(small_disk):
  disk = small_disk(256)
  manager = checkpointing.CheckpointManager(disk / "checkpoints", async_save=True)
  state = {"w": np.random.default_rng(0).normal(size=(256, 1024)).astype(np.float32)}  # 1 MiB: more than the disk
  deadline = time.time() + 60
  expected = r"checkpoint of step 7 .*: no space left on device; no earlier checkpoint was saved"
  with pytest.raises(io.WriteError, match=expected):
    manager.save(7, state, {"epoch": 0})  # a save whose thread has already failed says so here
    while time.time() < deadline:  # what the loop does after every step
      manager.check()
      time.sleep(0.01)
  manager.close()


def test_an_export_on_a_full_disk_is_one_error_naming_its_directory(small_disk):
  disk = small_disk(512)
  _fill(disk, leave_kib=16)
  config = presets.get_preset("tiny")
  params = decoder.init_params(config, jax.random.key(0))
  with pytest.raises(io.WriteError, match=r"could not write the model to .*/export: no space left on device"):
    hf_checkpoint.save_hf_checkpoint(params, config, disk / "export")


def test_a_jsonl_append_on_a_full_disk_names_the_file_and_keeps_what_was_written(small_disk):
  disk = small_disk(256)
  path = disk / "samples.jsonl"
  with io.JsonlAppender(path) as appender:
    appender.append([{"index": 0, "text": "kept"}])
    _fill(disk)
    with pytest.raises(io.WriteError, match=r"could not write lines to .*samples\.jsonl: no space left on device"):
      appender.append([{"index": i, "text": "x" * 1000} for i in range(1, 200)])
  assert io.complete_lines(path)[0] == b'{"index": 0, "text": "kept"}'


def test_training_metrics_on_a_full_disk_raise_at_once_and_never_wait_on_a_writer_thread(small_disk):
  import threading

  from srit_jax.training import metrics

  disk = small_disk(256)
  writer = metrics.MetricWriter(disk / "run")
  writer.write(1, {"loss": 1.0})
  _fill(disk)
  raised = []

  def steps():  # more metrics than the disk holds, as a long run on a full disk makes them
    try:
      for step in range(2, 5000):
        writer.write(step, {f"metric_{i}": float(i) for i in range(20)})
      writer.close()
    except io.WriteError as e:
      raised.append(str(e))

  thread = threading.Thread(target=steps, daemon=True)
  thread.start()
  thread.join(timeout=120)
  assert not thread.is_alive(), "a metrics write on a full disk hung"
  assert raised and "no space left on device" in raised[0], raised


def test_writes_to_a_read_only_disk_say_so(small_disk):
  disk = small_disk(64, "ro")
  with pytest.raises(io.WriteError, match=r"could not write the file .*summary\.json: read-only file system"):
    io.write_json(disk / "summary.json", {"a": np.float32(1).item()})


def test_a_failed_saves_leftover_write_errors_are_not_printed_after_its_one_line(monkeypatch):
  import logging
  import threading
  import types

  from srit_jax.training import failed_saves

  printed = []
  monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(str(u.exc_value)))  # Python's printer
  monkeypatch.setattr(threading, "excepthook", lambda failure: printed.append(str(failure.exc_value)))
  absl_filters = list(logging.getLogger("absl").filters)
  asyncio_filters = list(logging.getLogger("asyncio").filters)
  failed_saves.quiet_leftovers()
  try:

    def unraisable(error, obj=None):
      return types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=None, err_msg=None, object=obj)

    # What a failed save's TensorStore writes raise as Python collects them: not printed.
    sys.unraisablehook(unraisable(ValueError('RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database at local file')))
    sys.unraisablehook(unraisable(RuntimeError("Event loop is closed")))
    assert printed == []
    sys.unraisablehook(unraisable(ValueError("something else")))  # anything else still is
    assert printed == ["something else"]

    # The same error of a save's thread, and of its task that no one awaited: not printed either.
    failed_write = ValueError('RESOURCE_EXHAUSTED: Error writing "x" in OCDBT database at local file')
    thread_failure = lambda error: types.SimpleNamespace(exc_type=type(error), exc_value=error, exc_traceback=None)
    threading.excepthook(thread_failure(failed_write))
    threading.excepthook(thread_failure(KeyError("another")))
    assert printed == ["something else", "'another'"]
    task_error = lambda error: logging.LogRecord(
      "asyncio",
      logging.ERROR,
      "base_events.py",
      1,
      "Task exception was never retrieved",
      (),
      (type(error), error, None),
    )
    asyncio_logger = logging.getLogger("asyncio")
    assert not asyncio_logger.filter(task_error(failed_write))
    assert asyncio_logger.filter(task_error(ValueError("a task's own error")))
  finally:
    logging.getLogger("absl").filters[:] = absl_filters
    logging.getLogger("asyncio").filters[:] = asyncio_filters
