"""The multi-host path on CPU: processes joined by a local jax.distributed coordinator, sharing
one workdir, behave like one process holding all devices — and only process 0 writes files."""

import json
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import LIGHT_EVALUATION, TEACHER_MATH_FILE, TINY_PIPELINE_CONFIG, subprocess_env
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).parents[1]
pytestmark = pytest.mark.slow  # several processes each


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _records(path, n=24):
  rows = json.loads(TEACHER_MATH_FILE.read_text())[:n]
  path.write_text("".join(json.dumps({"instruction": r["instruction"], "output": r["output"]}) + "\n" for r in rows))
  return path


def _env(devices: int) -> dict:
  # A fixed peak per device, so that MFU's denominator is a formula here rather than a measurement.
  return subprocess_env(devices, SRIT_JAX_DEVICE_PEAK_FLOPS="1e11")


def _one_process(args: list[str]) -> subprocess.CompletedProcess:
  result = subprocess.run(
    [sys.executable, "-m", "srit_jax.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=900, env=_env(2)
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _start_two_processes(args: list[str], audit: tuple[pathlib.Path, pathlib.Path] | None = None):
  """Two processes of one device each; with `audit` (log prefix, directory), each under the
  write audit, process i logging to <prefix>.<i>.log."""
  port = _free_port()
  processes = []
  for i in range(2):
    command = [sys.executable, "-m", "srit_jax.cli"]
    if audit:
      log = f"{audit[0]}.{i}.log"
      command = [sys.executable, str(ROOT / "tests" / "write_audit.py"), log, str(audit[1])]
    flags = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"]
    processes.append(
      subprocess.Popen(
        [*command, *args, *flags], cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
      )
    )
  return processes


def _two_processes(args: list[str], **kwargs) -> list[str]:
  processes = _start_two_processes(args, **kwargs)
  outputs = [p.communicate(timeout=900) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


def _assert_same_parameters(a_dir, b_dir, atol):
  a, b = load_file(str(a_dir / "model.safetensors")), load_file(str(b_dir / "model.safetensors"))
  assert a.keys() == b.keys()
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=atol, err_msg=name)


def test_two_processes_train_like_one_with_the_same_mfu_terms(tiny_with_tokenizer, tmp_path):
  train_file = _records(tmp_path / "demos.jsonl")
  base = [
    "sft",
    "--config=configs/sft.py:tiny",
    f"--config.model={tiny_with_tokenizer}",
    f"--config.train_file={train_file}",
    "--config.num_steps=4",
    "--config.save_every=2",
    "--config.mesh.fsdp=-1",
  ]
  one = _one_process([*base, f"--workdir={tmp_path / 'one'}"])
  outputs = _two_processes([*base, f"--workdir={tmp_path / 'two'}"])
  assert "2 process(es), 2 device(s)" in outputs[0]
  assert "1 process(es), 2 device(s)" in one.stdout

  def losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]

  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-6)
  assert len(losses(tmp_path / "two")) == 4
  _assert_same_parameters(tmp_path / "one/export", tmp_path / "two/export", atol=1e-6)

  # MFU = global model FLOPs / (step time x every device's peak): the same terms either way.
  runs = {n: json.loads((tmp_path / n / "run.json").read_text()) for n in ("one", "two")}
  assert (runs["one"]["processes"], runs["two"]["processes"]) == (1, 2)
  assert runs["one"]["devices"] == runs["two"]["devices"] == 2
  assert runs["one"]["model_flops_per_step"] == runs["two"]["model_flops_per_step"] > 0
  assert runs["one"]["peak_flops"] == runs["two"]["peak_flops"] == pytest.approx(2e11)


def test_two_processes_share_a_gs_workdir_like_a_local_one(tiny_with_tokenizer, tmp_path, gcs_emulator):
  """On object storage too: one lock, one writer, the same losses and parameters."""
  from srit_jax import host_cache, io

  bucket, _ = gcs_emulator
  workdir = io.as_path(f"{bucket}/two-processes-{tmp_path.name}")
  base = [
    "sft",
    "--config=configs/sft.py:tiny",
    f"--config.model={tiny_with_tokenizer}",
    f"--config.train_file={_records(tmp_path / 'demos.jsonl')}",
    "--config.num_steps=4",
    "--config.save_every=2",
    "--config.mesh.fsdp=-1",
  ]
  _one_process([*base, f"--workdir={tmp_path / 'one'}"])
  _two_processes([*base, f"--workdir={workdir}"])

  def losses(metrics):
    return [json.loads(line)["loss"] for line in metrics.read_text().splitlines()]

  np.testing.assert_allclose(losses(workdir / "metrics.jsonl"), losses(tmp_path / "one" / "metrics.jsonl"), rtol=1e-6)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
  _assert_same_parameters(tmp_path / "one" / "export", host_cache.local_copy(workdir / "export"), atol=1e-6)
  assert not (workdir / ".srit_jax.lock").exists()


def _pipeline_args(model_dir, workdir) -> list[str]:
  return [
    "pipeline",
    f"--config={TINY_PIPELINE_CONFIG}",
    f"--config.student={model_dir}",
    *LIGHT_EVALUATION,
    f"--workdir={workdir}",
  ]


ARTIFACTS = ("demos/demos.jsonl", "refine/pairs.jsonl", "refine/heldout_pairs.jsonl", "refine/pair_stats.json")


@pytest.mark.long  # 4-5 minutes; each phase on two processes is checked by a quicker test
def test_pipeline_on_two_processes_equals_one_process_and_resumes_after_both_are_killed(tiny_student, tmp_path):
  """Two processes killed during refine's sampling, then during its DPO steps, and started again
  each time: they end with the artifacts and parameters of one process run through, and process 1
  writes no file of the workdir in any of the three runs."""
  one, two = tmp_path / "one", tmp_path / "two"
  _one_process(_pipeline_args(tiny_student, one))

  refine = two / "refine"
  for ready in (
    lambda: (refine / "samples.cot.jsonl").exists() and (refine / "samples.cot.jsonl").stat().st_size > 0,
    lambda: (refine / "checkpoints" / "2").exists(),
  ):
    processes = _start_two_processes(_pipeline_args(tiny_student, two), audit=(tmp_path / "writes", two))
    deadline = time.time() + 600
    while not ready() and all(p.poll() is None for p in processes) and time.time() < deadline:
      time.sleep(0.01)
    for p in processes:
      if p.poll() is None:
        p.send_signal(signal.SIGKILL)
      p.communicate()
  assert not (refine / "DONE.json").exists(), "the runs finished before they could be killed"
  _two_processes(_pipeline_args(tiny_student, two), audit=(tmp_path / "writes", two))

  for name in ARTIFACTS:
    assert (two / name).read_bytes() == (one / name).read_bytes(), name
  results = {n: json.loads((d / "results.json").read_text()) for n, d in (("one", one), ("two", two))}
  assert results["two"]["stages"] == results["one"]["stages"]
  for stage in ("sft", "refine"):
    _assert_same_parameters(one / stage / "export", two / stage / "export", atol=1e-5)

  def steps_and_losses(workdir):  # every DPO step once, as the uninterrupted run took it
    rows = [json.loads(line) for line in (workdir / "refine" / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows], [row["loss"] for row in rows]

  (one_steps, one_losses), (two_steps, two_losses) = steps_and_losses(one), steps_and_losses(two)
  assert two_steps == one_steps == [1, 2, 3, 4]
  np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
  # Process 1 opened no file of the workdir for writing (Orbax's own shard files aside);
  # process 0's log shows that the audit sees the writes.
  writes = [(tmp_path / f"writes.{i}.log").read_text().splitlines() for i in range(2)]
  assert any(w.endswith("/results.json.partial") for w in writes[0])
  assert [w for w in writes[1] if "/checkpoints/" not in w] == []


@pytest.mark.long  # 2 minutes; two processes ending SFT early are quicker
def test_two_processes_stop_early_at_the_step_one_process_stops_and_keep_the_same_step(tiny_student, tmp_path):
  """Early stopping decided on every process from the same held-out losses: both stop together,
  at one process's step, keep its step of lowest held-out loss, and only process 0 writes."""
  from srit_jax.tasks import synthetic

  demos = tmp_path / "demos.jsonl"
  demos.write_text(
    "".join(
      json.dumps({"task": "arith", "id": e.id, "output": e.solution, "correct": True}) + "\n"
      for e in synthetic.generate("arith", "train", size=16)
    )
  )
  args = [
    "refine",
    "--config=configs/refine.py:tiny",
    f"--config.model={tiny_student}",
    "--config.teacher_fallback=True",
    f"--config.demos_file={demos}",
    "--config.num_steps=12",
    "--config.eval_every=1",
    "--config.select_checkpoint=best_heldout",
    "--config.early_stopping_patience=2",
    "--config.nll_weight=1.0",
    "--config.optimizer.learning_rate=0.15",  # the held-out loss falls, then rises
  ]
  one, two = tmp_path / "one", tmp_path / "two"
  _one_process([*args, f"--workdir={one}"])
  _two_processes([*args, f"--workdir={two}"], audit=(tmp_path / "writes", two))
  summaries = [json.loads((d / "refine_summary.json").read_text()) for d in (one, two)]
  assert summaries[0]["steps_run"] < 12, summaries[0]["heldout_curve"]
  assert summaries[1]["steps_run"] == summaries[0]["steps_run"]
  assert summaries[1]["selected"]["step"] == summaries[0]["selected"]["step"]
  _assert_same_parameters(one / "export", two / "export", atol=1e-5)
  writes = (tmp_path / "writes.1.log").read_text().splitlines()
  assert [w for w in writes if "/checkpoints/" not in w and "/best_checkpoint/" not in w] == []


def test_two_processes_end_sft_early_like_one_and_export_the_same_kept_step(tiny_with_tokenizer, tmp_path):
  """SFT's held-out selection on a pod: both processes score the same held-out questions, stop
  at one process's step, export its step of lowest held-out loss, and only process 0 writes."""
  train_file = _records(tmp_path / "demos.jsonl")
  args = [
    "sft",
    "--config=configs/sft.py:tiny",
    f"--config.model={tiny_with_tokenizer}",
    f"--config.train_file={train_file}",
    "--config.num_steps=24",
    "--config.mesh.fsdp=-1",
    "--config.heldout_fraction=0.25",
    "--config.eval_every=1",
    "--config.select_checkpoint=best_heldout",
    "--config.early_stopping_patience=2",
    "--config.optimizer.learning_rate=3e-2",  # the held-out loss falls, then rises
    "--config.optimizer.schedule=constant",
  ]
  one, two = tmp_path / "one", tmp_path / "two"
  _one_process([*args, f"--workdir={one}"])
  _two_processes([*args, f"--workdir={two}"], audit=(tmp_path / "writes", two))

  def run(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines if "loss" in line]
    return steps, json.loads((workdir / "best_checkpoint.json").read_text())

  (steps, kept), (steps_two, kept_two) = run(one), run(two)
  assert len(steps) < 24 and steps_two == steps  # stopped early, at the same step
  assert kept_two["step"] == kept["step"] < steps[-1]
  assert kept_two["loss"] == pytest.approx(kept["loss"], rel=1e-5)
  _assert_same_parameters(one / "export", two / "export", atol=1e-5)
  writes = (tmp_path / "writes.1.log").read_text().splitlines()
  assert [w for w in writes if "/checkpoints/" not in w and "/best_checkpoint/" not in w] == []
