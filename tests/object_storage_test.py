"""Run directories, models and locks on object storage (`gs://`), against a local Cloud Storage
emulator: whole-object writes, appends that resume, copies instead of links, Orbax checkpoints
through its own GCS path, a lock that two runs cannot both hold, models read from a cached local
copy and exports uploaded from a staged one."""

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import jax.numpy as jnp
import numpy as np
import pytest

from srit_jax import host_cache, io
from srit_jax.phases import status, workdir_lock
from srit_jax.training.checkpointing import CheckpointManager


@pytest.fixture
def remote(gcs_emulator):
  """A fresh prefix in the emulator's bucket, as an epath.Path."""
  bucket, _ = gcs_emulator
  return io.as_path(f"{bucket}/{uuid.uuid4().hex[:8]}")


def test_places_are_local_paths_or_urls(tmp_path):
  assert io.as_path(tmp_path) == tmp_path and not io.is_remote(tmp_path)
  assert io.is_remote("gs://bucket/run") and str(io.as_path("gs://bucket/run") / "x.json") == "gs://bucket/run/x.json"


def test_files_of_a_run_directory_on_object_storage(remote):
  io.write_json(remote / "a" / "summary.json", {"x": 1})
  assert json.loads((remote / "a" / "summary.json").read_text()) == {"x": 1}
  io.write_bytes(remote / "chart.png", b"\x89PNG")
  assert (remote / "chart.png").read_bytes() == b"\x89PNG"
  io.write_jsonl(remote / "rows.jsonl", [{"x": 1}, {"x": 2}])
  assert [row for _, row in io.read_rows(remote / "rows.jsonl")] == [{"x": 1}, {"x": 2}]

  # Appends land whole; reopening keeps the trusted lines only.
  with io.JsonlAppender(remote / "samples.jsonl") as appender:
    appender.append([{"i": 0}, {"i": 1}])
    appender.append([{"i": 2}])
  assert [json.loads(line) for line in io.complete_lines(remote / "samples.jsonl")] == [{"i": 0}, {"i": 1}, {"i": 2}]
  kept = io.complete_lines(remote / "samples.jsonl")[:2]
  with io.JsonlAppender(remote / "samples.jsonl", keep_lines=kept) as appender:
    appender.append([{"i": 9}])
  assert (remote / "samples.jsonl").read_text() == '{"i": 0}\n{"i": 1}\n{"i": 9}\n'

  # Files shared with a later round are copies (object storage has no links); a reset keeps what it is told.
  io.link_files(remote, remote / "round_2", ("samples.jsonl", "absent.jsonl"))
  assert (remote / "round_2" / "samples.jsonl").read_text() == (remote / "samples.jsonl").read_text()
  assert not (remote / "round_2" / "absent.jsonl").exists()
  (remote / "round_2" / "samples.jsonl").write_text("stale\n")
  io.link_files(remote, remote / "round_2", ("samples.jsonl",))
  assert (remote / "round_2" / "samples.jsonl").read_text() == (remote / "samples.jsonl").read_text()
  # Another run's finished phase, taken over whole: its files copied, folders and all.
  io.link_tree(remote / "a", remote / "other_run" / "a")
  assert json.loads((remote / "other_run" / "a" / "summary.json").read_text()) == {"x": 1}
  io.link_tree(remote / "round_2", remote / "other_run" / "round_2")
  assert (remote / "other_run" / "round_2" / "samples.jsonl").read_text() == (remote / "samples.jsonl").read_text()
  io.reset_directory(remote, keep=("samples.jsonl",))
  assert sorted(p.name for p in remote.iterdir()) == ["samples.jsonl"]


def test_an_append_on_object_storage_uploads_its_batch_alone_and_composes_it_on(remote, monkeypatch):
  import fsspec

  path = remote / "samples.jsonl"
  fs, key = fsspec.core.url_to_fs(str(path))
  uploads, composes = [], []
  pipe, merge = fs.pipe_file, fs.merge
  monkeypatch.setattr(fs, "pipe_file", lambda name, data, **kw: (uploads.append(len(data)), pipe(name, data, **kw)))
  monkeypatch.setattr(fs, "merge", lambda name, parts, **kw: (composes.append(len(parts)), merge(name, parts, **kw)))
  batch = [{"text": "x" * 100}] * 4
  size = len(b"".join(json.dumps(r).encode() + b"\n" for r in batch))
  with io.JsonlAppender(path) as appender:
    for _ in range(5):
      appender.append(batch)
  assert uploads == [0] + [size] * 5 and composes == [2] * 5  # each batch's bytes once, not the object so far
  assert len(io.complete_records(path)) == 20 and not fs.exists(key + ".append")

  # A batch a kill left uploaded but not composed on is dropped; the trusted lines are not uploaded again.
  fs.pipe(key + ".append", b'{"lost": 1}\n')
  generation = fs.info(key)["generation"]
  uploads.clear()
  with io.JsonlAppender(path, keep_lines=io.complete_lines(path)) as appender:
    assert fs.info(key)["generation"] == generation and not fs.exists(key + ".append")
    appender.append(batch)
  assert uploads == [size] and len(io.complete_records(path)) == 24

  # Before Cloud Storage's limit on composed parts the object is rewritten whole, one part again.
  monkeypatch.setattr(io.ObjectAppender, "MOST_PARTS", 4)
  uploads.clear(), composes.clear()
  with io.JsonlAppender(path, keep_lines=io.complete_lines(path)[:2]) as appender:  # cut to 2 lines: rewritten
    for _ in range(4):
      appender.append(batch)
  lines = 2 * size // 4
  assert uploads == [lines, size, size, lines + 3 * size, size] and composes == [2, 2, 2]
  records = io.complete_records(path)
  assert len(records) == 18 and records[2:] == batch * 4


def test_a_remote_model_is_read_from_a_cached_copy_and_an_export_is_uploaded(remote, tmp_path, monkeypatch):
  monkeypatch.setenv("SRIT_JAX_CACHE", str(tmp_path / "cache"))
  with host_cache.staged(remote / "export") as local:
    assert not io.is_remote(local)
    (local / "config.json").write_text('{"a": 1}')
    (local / "sub").mkdir()
    (local / "sub" / "w.bin").write_bytes(b"123")
  assert (remote / "export" / "sub" / "w.bin").read_bytes() == b"123"
  copy = host_cache.local_copy(remote / "export")  # the staged files, kept as the cache's copy: nothing fetched
  assert (copy / "config.json").read_text() == '{"a": 1}' and (copy / "sub" / "w.bin").read_bytes() == b"123"
  (remote / "export" / "config.json").write_text('{"a": 2}')  # changed remotely: fetched again
  assert (host_cache.local_copy(remote / "export") / "config.json").read_text() == '{"a": 2}'
  assert host_cache.local_copy(remote / "export" / "sub" / "w.bin").read_bytes() == b"123"
  with pytest.raises(FileNotFoundError, match="no such file"):
    host_cache.local_copy(remote / "missing")


def test_a_phase_another_run_finished_on_object_storage_is_copied_not_run(remote):
  from srit_jax.phases.phase import RUN_CONFIG, Phase, other_runs

  other, here = remote / "other", remote / "here"
  for workdir in (other, here):
    io.write_json(workdir / RUN_CONFIG, {})
  made = Phase(other, "sft", {"lr": 1e-4}, str(other / "demos"))
  assert not made.done()
  for folder in ("export", "checkpoints/20"):
    io.write_bytes(made.dir / folder / "model.safetensors", b"weights")
  made.finish()
  assert other_runs(str(remote), here) == (other,)
  reused = Phase(here, "sft", {"lr": 1e-4}, str(here / "demos"), reuse_from=(other,))
  assert reused.done()
  assert (here / "sft" / "export" / "model.safetensors").read_bytes() == b"weights"
  assert not (here / "sft" / "checkpoints").exists()  # its training state is not copied
  assert reused.recorded()["fingerprint"] == made.fingerprint
  assert not Phase(here, "sft", {"lr": 2e-4}, str(here / "demos"), reuse_from=(other,)).done()


def test_checkpoints_on_object_storage_save_and_restore(remote):
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray(3)}
  manager = CheckpointManager(remote / "checkpoints", async_save=True)
  manager.save(3, state, {"position": 7})
  manager.wait()
  manager.close()
  assert (remote / "checkpoints" / "3").exists()
  restored = CheckpointManager(remote / "checkpoints").restore_latest(state)
  assert restored is not None
  step, got, data = restored
  assert step == 3 and data == {"position": 7}
  np.testing.assert_array_equal(got["w"], state["w"])


def test_a_workdir_lock_on_object_storage_is_held_by_one_run(remote):
  assert workdir_lock.live_holder(remote) is None
  with workdir_lock.hold(remote):
    holder = json.loads((remote / workdir_lock.LOCK_NAME).read_text())
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
    assert workdir_lock.live_holder(remote) == holder  # what `srit-jax status` says
    with pytest.raises(workdir_lock.WorkdirLockedError, match=f"in use by pid {os.getpid()}"):
      workdir_lock.WorkdirLock(remote).acquire()
  assert not (remote / workdir_lock.LOCK_NAME).exists()  # released

  # The lock of a run that died (same host, no such pid) is taken over.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  record = {"host": socket.gethostname(), "pid": int(dead.stdout), "since": "earlier", "token": "dead"}
  (remote / workdir_lock.LOCK_NAME).write_text(json.dumps(record))
  assert workdir_lock.live_holder(remote) is None
  with workdir_lock.hold(remote):
    assert json.loads((remote / workdir_lock.LOCK_NAME).read_text())["pid"] == os.getpid()

  # Another host's lock, refreshed within the minute, is not.
  record = {"host": "another-host", "pid": 1, "since": "now", "token": "live"}
  (remote / workdir_lock.LOCK_NAME).write_text(json.dumps(record))
  with pytest.raises(workdir_lock.WorkdirLockedError, match="in use by pid 1 on host another-host"):
    workdir_lock.WorkdirLock(remote).acquire()
  assert workdir_lock.live_holder(remote) == record


def _steps_saved(phase) -> list[int]:
  """The phase's finished checkpoints (on gs:// a step's folder exists before its commit marker)."""
  try:
    return status.saved_steps(phase)
  except FileNotFoundError:
    return []


@pytest.mark.long  # 2.5 minutes; a kept step and two processes on gs:// are quicker
def test_the_tiny_pipeline_on_a_gs_workdir_is_held_by_one_run_resumes_after_a_kill_and_matches_a_local_one(
  tiny_student, tmp_path, gcs_emulator
):
  from conftest import LIGHT_EVALUATION, TINY_PIPELINE_CONFIG

  bucket, emulator = gcs_emulator
  workdir = io.as_path(f"{bucket}/pipeline-{uuid.uuid4().hex[:8]}")
  # Copies of remote files in a cache of the test's own; compiled programs in the suite's.
  env = {**os.environ, **emulator, "SRIT_JAX_CACHE": str(tmp_path / "cache")}
  compiled = host_cache.compilation_cache_dir()
  command = [
    sys.executable, "-m", "srit_jax.cli", "pipeline", f"--config={TINY_PIPELINE_CONFIG}",
    f"--config.student={tiny_student}", *LIGHT_EVALUATION, f"--compilation_cache={compiled}",
  ]  # fmt: skip

  def run(where, **kwargs):
    return subprocess.run([*command, f"--workdir={where}"], env=env, capture_output=True, text=True, **kwargs)

  log = open(tmp_path / "first.log", "w+")  # noqa: SIM115 (read after the kill)
  first = subprocess.Popen([*command, f"--workdir={workdir}"], env=env, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 600
  while first.poll() is None and not (workdir / workdir_lock.LOCK_NAME).exists() and time.time() < deadline:
    time.sleep(0.2)
  second = run(workdir, timeout=300)  # while the first holds the workdir
  assert second.returncode != 0 and f"in use by pid {first.pid}" in second.stderr, second.stderr[-2000:]
  # Killed once DPO has saved a checkpoint on the bucket (the refine phase's own workdir).
  while first.poll() is None and not _steps_saved(workdir / "refine") and time.time() < deadline:
    time.sleep(0.05)
  assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
  first.kill()
  first.wait()
  log.close()
  assert (workdir / "sft" / "DONE.json").exists() and not (workdir / "results.json").exists()
  # Where it stands, read from the bucket: SFT done, DPO under way from its saved step, no live run.
  where = subprocess.run(
    [sys.executable, "-m", "srit_jax.cli", "status", f"--workdir={workdir}", f"--config={TINY_PIPELINE_CONFIG}"],
    env=env, capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert where.returncode == 0, where.stderr[-2000:]
  assert "no run holds it; the same command resumes the phase under way" in where.stdout
  assert "| sft | done |" in where.stdout and "| eval/srit | not started |" in where.stdout
  saved = _steps_saved(workdir / "refine")[-1]
  assert f"step {saved} saved" in where.stdout.split("| refine | under way |")[1].splitlines()[0]

  rerun = run(workdir, timeout=900)  # takes the dead run's lock over and resumes
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "[sft] done already, skipped" in rerun.stdout and "resuming" in rerun.stdout
  refined = json.loads((workdir / "refine" / "DONE.json").read_text())  # its time: the killed attempt's unread
  assert refined["attempts"] == 2 and refined["seconds"] > 0
  local = run(tmp_path / "local", timeout=900)
  assert local.returncode == 0, local.stderr[-3000:]

  remote_results = json.loads((workdir / "results.json").read_text())
  local_results = json.loads((tmp_path / "local" / "results.json").read_text())
  assert remote_results["stages"] == local_results["stages"]
  assert remote_results["paired"] == local_results["paired"]
  for name in ("demos/demos.jsonl", "refine/pairs.jsonl", "eval/srit/arith.cot.jsonl"):
    assert (workdir / name).read_text() == (tmp_path / "local" / name).read_text(), name

  def losses(metrics):  # the resumed DPO steps give the same losses as the uninterrupted run's
    return [(row["step"], row["loss"]) for row in map(json.loads, metrics.read_text().splitlines())]

  assert losses(workdir / "refine" / "metrics.jsonl") == losses(tmp_path / "local" / "refine" / "metrics.jsonl")
  assert (workdir / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
  assert not (workdir / workdir_lock.LOCK_NAME).exists()


def test_a_kept_best_step_on_object_storage_is_the_local_runs(remote, tiny_with_tokenizer, tmp_path):
  """SFT that keeps its step of lowest held-out loss and stops early, on a gs:// workdir: the
  best checkpoint and its record through object storage, the export the local run's."""
  from conftest import load_config, write_instruction_records
  from safetensors.numpy import load_file

  from srit_jax.phases import sft

  train_file = write_instruction_records(tmp_path / "demos.jsonl")
  config = load_config("sft", "tiny")
  config.update(
    model=str(tiny_with_tokenizer),
    train_file=str(train_file),
    num_steps=24,
    heldout_fraction=0.25,
    eval_every=1,
    select_checkpoint="best_heldout",
    early_stopping_patience=2,
  )
  config.mesh.update(data=1, fsdp=4, tensor=1)
  config.optimizer.update(learning_rate=3e-2, schedule="constant")  # the held-out loss falls, then rises
  local = sft.train(config, tmp_path / "local")
  on_bucket = sft.train(config, remote / "sft")
  assert (on_bucket.steps_run, on_bucket.selected_step) == (local.steps_run, local.selected_step)
  assert local.steps_run < 24 and local.selected_step < local.steps_run
  assert json.loads((remote / "sft" / "best_checkpoint.json").read_text())["step"] == local.selected_step
  exported = load_file(str(host_cache.local_copy(remote / "sft" / "export") / "model.safetensors"))
  for name, value in load_file(str(tmp_path / "local" / "export" / "model.safetensors")).items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)
