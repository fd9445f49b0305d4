"""A preemption notice (SIGTERM) stops a run cleanly: a training phase saves the step it reached
and exits with the preemption status, a generation phase keeps every line it finished; the rerun
ends exactly where an uninterrupted run ends — in one process and in two."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import subprocess_env
from generation_test import assert_same_generations
from multihost_test import _free_port, _records
from refine_test import _demos_file
from safetensors.numpy import load_file

from srit_jax import preemption

ROOT = pathlib.Path(__file__).parents[1]
pytestmark = pytest.mark.slow  # processes started, signalled and restarted


def _metric_steps(workdir: pathlib.Path) -> list[int]:
  path = workdir / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line)["step"] for line in path.read_text().splitlines() if '"loss"' in line]


def _terminate_when(processes, ready, *, timeout_s=600) -> list[subprocess.CompletedProcess]:
  """Sends SIGTERM to the first process as soon as `ready()` holds; waits for all of them."""
  deadline = time.time() + timeout_s
  while not ready():
    assert all(p.poll() is None for p in processes), "the run ended before the notice could be sent"
    assert time.time() < deadline, "the run never got there"
    time.sleep(0.05)
  processes[0].send_signal(signal.SIGTERM)
  return [subprocess.CompletedProcess(p.args, p.wait(timeout=timeout_s), *p.communicate()) for p in processes]


def _start(args, *, processes=1):
  port = _free_port()
  started = []
  for i in range(processes):
    distributed = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={i}"]
    started.append(
      subprocess.Popen(
        [sys.executable, "-m", "srit_jax.cli", *args, *(distributed if processes > 1 else [])],
        cwd=ROOT,
        env=subprocess_env(1),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
      )
    )
  return started


def _finish(args, *, processes=1):
  for p in _start(args, processes=processes):
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]


def _assert_same_export(a: pathlib.Path, b: pathlib.Path):
  full, resumed = load_file(str(a / "export/model.safetensors")), load_file(str(b / "export/model.safetensors"))
  assert full.keys() == resumed.keys()
  for name in full:
    np.testing.assert_array_equal(resumed[name], full[name], err_msg=name)


def _preempt(args, ready, *, processes=1) -> str:
  """Starts the command and sends the notice once `ready()` holds: every process exits with the
  preemption status. Returns the first process's last line (its one-line message)."""
  results = _terminate_when(_start(args, processes=processes), ready)
  for result in results:
    assert result.returncode == preemption.EXIT_CODE, result.stderr[-3000:]
  return results[0].stderr.strip().splitlines()[-1]


def _preempt_at_step(base, workdir, *, processes, at_step=3, save_every=50):
  """The run on `workdir` preempted once `at_step` steps are logged: it saves the step it
  reached (not the last `save_every`)."""
  message = _preempt(
    [*base, f"--workdir={workdir}"], lambda: len(_metric_steps(workdir)) >= at_step, processes=processes
  )
  assert message.startswith("preempted: saved the checkpoint of step "), message
  reached = max(_metric_steps(workdir))
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved[-1] == reached and reached % save_every, (saved, reached)
  assert f"step {reached} of" in message


def _preempt_and_resume(base, tmp_path, *, processes):
  _finish([*base, f"--workdir={tmp_path / 'full'}"], processes=processes)
  workdir = tmp_path / "preempted"
  _preempt_at_step(base, workdir, processes=processes)
  _finish([*base, f"--workdir={workdir}"], processes=processes)
  _assert_same_export(tmp_path / "full", workdir)
  assert _metric_steps(workdir) == _metric_steps(tmp_path / "full")


def _sft_args(model_dir, train_file, steps=16):
  return [
    "sft",
    "--config=configs/sft.py:tiny",
    f"--config.model={model_dir}",
    f"--config.train_file={train_file}",
    f"--config.num_steps={steps}",
    "--config.save_every=50",
    "--config.mesh.fsdp=-1",
  ]


def _refine_args(student_dir, tmp_path, *settings):
  """`srit-jax refine` of the tiny student on the teacher's demonstrations, one device a process."""
  return [
    "refine",
    "--config=configs/refine.py:tiny",
    f"--config.model={student_dir}",
    "--config.teacher_fallback=True",
    f"--config.demos_file={_demos_file(tmp_path / 'demos.jsonl')}",
    "--config.mesh.fsdp=-1",
    *settings,
  ]


def test_sigterm_during_sft_saves_the_step_reached_and_resumes_exactly(tiny_with_tokenizer, tmp_path):
  _preempt_and_resume(_sft_args(tiny_with_tokenizer, _records(tmp_path / "demos.jsonl")), tmp_path, processes=1)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tiny_with_tokenizer, tmp_path):
  _preempt_and_resume(_sft_args(tiny_with_tokenizer, _records(tmp_path / "demos.jsonl")), tmp_path, processes=2)


@pytest.mark.parametrize("processes", [1, pytest.param(2, marks=pytest.mark.long)])  # [2]: 3.5 minutes
def test_sigterm_in_the_reference_pass_then_in_dpo_keeps_what_each_reached_and_resumes_exactly(
  tiny_student, tmp_path, processes
):
  """One run preempted twice: amid its reference pass (the finished batches kept), then, resumed,
  at DPO step 3 (that step saved); resumed again, it ends as an uninterrupted run ends."""
  # Reference batches of 2 pairs per device: several of them.
  base = _refine_args(
    tiny_student, tmp_path, "--config.num_steps=16", "--config.batch_size=2", "--config.save_every=50"
  )
  _finish([*base, f"--workdir={tmp_path / 'full'}"], processes=processes)
  workdir = tmp_path / "preempted"
  # The pairs are written just before the reference pass begins: the notice comes amid it.
  message = _preempt([*base, f"--workdir={workdir}"], (workdir / "pairs.jsonl").exists, processes=processes)
  assert message.startswith("preempted: the log-probs of ") and "reference_logps.so_far.npz" in message, message
  assert not (workdir / "reference_logps.npz").exists() and not _metric_steps(workdir)
  full = np.load(tmp_path / "full" / "reference_logps.npz")
  kept = np.load(workdir / "reference_logps.so_far.npz")
  assert 0 < len(kept["chosen"]) < len(full["chosen"])
  np.testing.assert_array_equal(kept["chosen"], full["chosen"][: len(kept["chosen"])])

  _preempt_at_step(base, workdir, processes=processes)  # the reference pass finished from its kept batches
  for side in ("chosen", "rejected"):
    np.testing.assert_array_equal(np.load(workdir / "reference_logps.npz")[side], full[side])
  _finish([*base, f"--workdir={workdir}"], processes=processes)
  _assert_same_export(tmp_path / "full", workdir)
  assert _metric_steps(workdir) == _metric_steps(tmp_path / "full")


def test_sigterm_during_sampling_keeps_every_finished_line(tiny_with_tokenizer, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": f"Count to {i}.", "id": i}) + "\n" for i in range(64)))
  base = [
    "generate",
    "--config=configs/generate.py",
    f"--config.model={tiny_with_tokenizer}",
    f"--config.prompts_file={prompts}",
    "--config.batch_size=4",
    "--config.max_new_tokens=24",
  ]
  full, out = tmp_path / "full.jsonl", tmp_path / "preempted.jsonl"
  _finish([*base, f"--out={full}"])
  lines = lambda: out.read_text().count("\n") if out.exists() else 0
  assert "prompts are answered in" in _preempt([*base, f"--out={out}"], lambda: lines() >= 8)
  kept = out.read_text()
  assert kept.endswith("\n") and 8 <= kept.count("\n") < 64  # whole lines only, none lost
  for line in kept.splitlines():
    json.loads(line)
  _finish([*base, f"--out={out}"])
  assert_same_generations(out, full)
