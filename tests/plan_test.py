"""`srit-jax plan`: programs compiled ahead of time for a TPU slice on this CPU host (libtpu from
the tpu extra), a fitting table for a tiny model, a named shortfall for an oversized one, and
one-line errors for topologies, meshes and batches that cannot be."""

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import TINY_PIPELINE_CONFIG, requires_libtpu

ROOT = pathlib.Path(__file__).parents[1]


def _plan(*args, timeout=900):
  env = dict(os.environ, JAX_PLATFORMS="cpu")  # compile for the TPU topology; run nothing
  return subprocess.run(
    [sys.executable, "-m", "srit_jax.cli", "plan", *map(str, args)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env=env,
  )


def _rows(stdout: str) -> list[list[str]]:
  return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines() if line.startswith("| ")][1:]


@pytest.mark.slow
@requires_libtpu
def test_a_tiny_pipeline_fits_a_v5e_8_and_every_program_is_listed(tiny_with_tokenizer):
  result = _plan(f"--config={TINY_PIPELINE_CONFIG}", f"--config.student={tiny_with_tokenizer}", "--topology=v5e-8")
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  assert result.stdout.startswith("planning pipeline for v5e-8 (8 devices, TPU v5 lite)")
  assert "E0000" not in result.stderr and "could not determine TPU" not in result.stderr  # libtpu kept quiet
  rows = _rows(result.stdout)
  assert [(r[0], r[1].split(" (")[0]) for r in rows] == [
    ("sft", "SFT step"),
    ("refine", "sampler"),
    ("refine", "DPO step"),
    ("refine", "reference log-probs"),
    ("eval", "sampler"),
  ]
  assert all(r[8] == "yes" and float(r[7]) > 0 for r in rows)
  assert rows[0][2] == "splash"  # 128-position rows on TPU: the splash kernel
  assert "every program fits" in result.stdout


@pytest.mark.slow
@requires_libtpu
def test_a_paper_variant_fits_its_slice_in_every_phase():
  """One paper-scale run (Llama-2-7B, full fine-tuning on v4-32) as `plan` sees it: every program
  compiled for the slice fits its chips (the other variants: benchmarks/tpu_plan.py, docs/tpu.md)."""
  result = _plan("--config=configs/paper.py:llama2_7b,v4-32", "--topology=v4-32", timeout=1500)
  assert result.returncode == 0, result.stdout + result.stderr[-3000:]
  rows = _rows(result.stdout)
  assert {(r[0], r[1].split(" (")[0]) for r in rows} >= {("sft", "SFT step"), ("refine", "DPO step")}
  assert all(r[8] == "yes" for r in rows) and all(r[2] == "splash" for r in rows if "step" in r[1])
  assert "every program fits" in result.stdout


@requires_libtpu
def test_an_oversized_step_is_named_with_its_shortfall_and_what_would_fit(tiny_with_tokenizer):
  result = _plan(
    "--config=configs/sft.py",
    f"--config.model={tiny_with_tokenizer}",
    "--config.batch_size=4096",
    "--config.max_length=2048",
    "--config.attention=xla",  # scores kept for the backward pass
    "--topology=v5e-8",
  )
  assert result.returncode == 1, result.stdout + result.stderr[-3000:]
  assert "does not fit:" in result.stdout
  line = next(line for line in result.stdout.splitlines() if line.strip().startswith("sft SFT step"))
  assert "of 16.91 GB" in line and "would fit with:" in line
  assert "num_microbatches=" in line and "remat_policy=full" in line


@pytest.mark.parametrize(
  "args,message",
  [
    (["--topology=v9-8"], "unknown topology 'v9-8'; slices: v4-8"),
    (["--topology=v5e-8", "--config.mesh.data=3", "--config.mesh.fsdp=-1"], "8 devices cannot be split"),
    (["--topology=v4-8", "--config.batch_size=6"], "does not divide over the mesh's data x fsdp = 4 devices"),
  ],
)
@requires_libtpu
def test_impossible_topologies_meshes_and_batches_are_one_line_errors(tiny_with_tokenizer, args, message):
  result = _plan("--config=configs/sft.py", f"--config.model={tiny_with_tokenizer}", *args, timeout=120)
  assert result.returncode == 2, result.stdout + result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], result.stderr
  assert "Traceback" not in result.stderr
