"""The multi-host path on CPU: two processes joined by a local jax.distributed coordinator run
SFT steps to the same losses as one process holding both devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import TEACHER_MATH_FILE


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _records(path, n=24):
  rows = json.loads(TEACHER_MATH_FILE.read_text())[:n]
  path.write_text("".join(json.dumps({"instruction": r["instruction"], "output": r["output"]}) + "\n" for r in rows))
  return path


@pytest.mark.slow
def test_two_processes_train_like_one(tiny_with_tokenizer, tmp_path):
  train_file = _records(tmp_path / "demos.jsonl")
  root = os.path.dirname(os.path.dirname(__file__))
  base = [
    sys.executable,
    "-m",
    "srit_jax.cli",
    "sft",
    "--config=configs/sft.py:tiny",
    f"--config.model={tiny_with_tokenizer}",
    f"--config.train_file={train_file}",
    "--config.num_steps=4",
    "--config.save_every=2",
    "--config.mesh.fsdp=-1",
  ]
  one = subprocess.run(
    [*base, f"--workdir={tmp_path / 'one'}"],
    cwd=root,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
  )
  assert one.returncode == 0, one.stderr[-3000:]

  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  processes = [
    subprocess.Popen(
      [
        *base,
        f"--workdir={tmp_path / 'two'}",
        f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=root,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=600) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "2 process(es), 2 device(s)" in outputs[0][0]
  assert "1 process(es), 2 device(s)" in one.stdout

  def losses(workdir):
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]

  np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-6)
  assert len(losses(tmp_path / "two")) == 4
  from safetensors.numpy import load_file

  a = load_file(str(tmp_path / "one/export/model.safetensors"))
  b = load_file(str(tmp_path / "two/export/model.safetensors"))
  for name in a:
    np.testing.assert_allclose(b[name], a[name], atol=1e-6, err_msg=name)
