"""Every benchmark runs end to end on the tiny preset, with its PyTorch baseline, and reports
figures that are numbers (timing itself is not asserted: speed is measured, not tested)."""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import subprocess_env

from srit_jax.model import presets
from srit_jax.training import flops

ROOT = pathlib.Path(__file__).parents[1]

pytestmark = pytest.mark.slow


def _run(tmp_path, script, *flags):
  out = tmp_path / "figures.json"
  env = subprocess_env(1, JAX_PLATFORMS="cpu")  # one device, as a user runs it
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / script),
      "--preset=tiny",
      "--warmup=0",
      "--repeats=1",
      f"--out={out}",
      *flags,
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(out.read_text())


def _positive(value):
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_train_step_times_ours_with_accumulation_and_torch(tmp_path):
  figures = _run(tmp_path, "train_step.py", "--sizes=4x64", "--microbatches=1,2", "--baseline=torch_eager")
  (run,) = figures["runs"]
  assert (run["batch"], run["length"]) == (4, 64)
  for side in ("ours", "ours_2_microbatches", "torch_eager"):
    assert _positive(run[side]["step_s"]) and _positive(run[side]["tokens_per_s"]) and _positive(run[side]["mfu"])
  assert run["ours"]["tokens_per_s"] == pytest.approx(4 * 64 / run["ours"]["step_s"])
  assert run["torch_eager"]["ours_speedup"] == pytest.approx(run["torch_eager"]["step_s"] / run["ours"]["step_s"])
  assert run["ours"]["temp_bytes"] > 0
  assert figures["machine"]["model"] == "tiny"


def test_train_step_times_lora_beside_peft(tmp_path):
  figures = _run(tmp_path, "train_step.py", "--sizes=2x64", "--lora_rank=4", "--baseline=peft_eager")
  (run,) = figures["runs"]
  assert run["lora_rank"] == 4
  for side in ("ours", "peft_eager"):
    assert _positive(run[side]["step_s"]) and _positive(run[side]["mfu"])
  # MFU counts the LoRA step's own FLOPs (no weight gradients for the frozen base), not full fine-tuning's.
  tiny = presets.get_preset("tiny")
  lora_flops = flops.train_step_flops(dataclasses.replace(tiny, lora_rank=4, lora_alpha=8.0), 2, 64)
  assert lora_flops < 0.8 * flops.train_step_flops(tiny, 2, 64)
  ours = run["ours"]
  assert ours["mfu"] * ours["step_s"] * figures["peak_tflops"] * 1e12 == pytest.approx(lora_flops, rel=1e-6)


def test_dpo_step_times_both_reference_forms_and_torch(tmp_path):
  figures = _run(tmp_path, "dpo_step.py", "--sizes=2x64", "--baseline=torch_eager")
  (run,) = figures["runs"]
  for side in ("in_step_reference", "precomputed_reference", "torch_eager"):
    assert _positive(run[side]["pairs_per_s"]) and _positive(run[side]["mfu"])
  # The precomputed form holds no reference weights among its arguments.
  assert run["precomputed_reference"]["argument_bytes"] < run["in_step_reference"]["argument_bytes"]


def test_forward_compares_depths_and_torch(tmp_path):
  figures = _run(tmp_path, "forward.py", "--batch=2", "--length=64", "--baseline=torch_eager")
  assert figures["shallow_layers"] < figures["layers"]
  assert _positive(figures["compile_s"]) and _positive(figures["compile_s_shallow"])
  assert _positive(figures["ours"]["tokens_per_s"]) and _positive(figures["torch_eager"]["tokens_per_s"])


@pytest.mark.parametrize("sampling", [[], ["--temperature=0.7", "--top_p=0.9"]], ids=["greedy", "top_p"])
def test_generate_times_ours_and_hf_generate(tmp_path, sampling):
  figures = _run(tmp_path, "generate.py", "--batches=1,2", "--new_tokens=8", "--baseline=hf_generate", *sampling)
  assert figures["sampling"]["top_p"] == (0.9 if sampling else 1.0)
  assert [run["batch"] for run in figures["runs"]] == [1, 2]
  for run in figures["runs"]:
    for side in ("ours", "hf_generate"):
      assert _positive(run[side]["call_s"]) and _positive(run[side]["tokens_per_s"])
    assert run["ours"]["tokens_per_s"] == pytest.approx(run["batch"] * 8 / run["ours"]["call_s"])


def test_evaluation_times_static_and_refilled_batches_on_real_questions(tmp_path, tiny_student):
  figures = _run(
    tmp_path,
    "evaluation.py",
    f"--model={tiny_student}",
    "--questions=6",
    "--samples=2",  # greedy: a question's two rows share one prefill of its prompt but for refilled_unshared
    "--batch=4",
    "--max_new_tokens=16",
    "--ways=static,refilled,refilled_unshared",
  )
  assert (figures["task"], figures["questions"], figures["rows"], figures["batch"]) == ("wordmath", 6, 12, 4)
  assert figures["answers_differing_from_the_first_way"] == {"static": 0, "refilled": 0, "refilled_unshared": 0}
  assert figures["answer_tokens"]["max"] >= figures["answer_tokens"]["mean"] > 0
  # The chat template's system turn and the instruction lead every prompt.
  assert figures["prompt_tokens_mean"] > figures["shared_prefix_tokens"] >= 16
  assert figures["shared_prefix_speedup"] == pytest.approx(
    min(figures["runs"]["refilled_unshared"]["seconds"]) / min(figures["runs"]["refilled"]["seconds"])
  )
  for way in ("static", "refilled", "refilled_unshared"):
    run = figures["runs"][way]
    assert len(run["seconds"]) == 1 and _positive(run["answers_per_s"])
    assert run["new_tokens_per_s"] == pytest.approx(figures["new_tokens"] / min(run["seconds"]))
  assert 0 < figures["runs"]["static"]["live_row_step_share"] <= 1
  assert figures["refilled_speedup"] == pytest.approx(
    min(figures["runs"]["static"]["seconds"]) / min(figures["runs"]["refilled"]["seconds"])
  )


def test_unknown_baseline_is_refused_by_name(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / "benchmarks" / "forward.py"),
      "--preset=tiny",
      "--batch=1",
      "--length=8",
      "--baseline=tensorflow",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert result.returncode != 0 and "tensorflow" in result.stderr


def test_attention_kernels_agree_with_xla_and_a_missing_kernel_is_reported(tmp_path):
  figures = _run(tmp_path, "attention.py", "--sizes=2x128", "--segments=3", "--kernels=xla,blockwise,cudnn")
  (run,) = figures["runs"]
  assert run["xla"]["max_error_out"] < 1e-5 and _positive(run["xla"]["seconds"])
  assert run["blockwise"]["max_error_out"] < 1e-4 and run["blockwise"]["max_error_grads"] < 1e-4
  assert "cuDNN" in run["cudnn"]["error"]  # no GPU here: the kernel says so instead of stopping the run


def test_a_profiled_step_is_summarized_by_kernel(tmp_path):
  _run(tmp_path, "train_step.py", "--sizes=2x64", f"--profile={tmp_path / 'trace'}")
  summary = tmp_path / "kernels.json"
  result = subprocess.run(
    [sys.executable, str(ROOT / "benchmarks" / "trace_summary.py"), str(tmp_path / "trace"), f"--out={summary}"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  (trace,) = json.loads(summary.read_text())
  assert _positive(trace["busy_ms"]) and trace["kernels"]
  assert sum(trace["kinds_ms"].values()) == pytest.approx(trace["busy_ms"])
  assert all(0 < kernel["share"] <= 1 for kernel in trace["kernels"])


def _pairs_file(tmp_path, long_chains=()):
  """Six small preference pairs (a chain over a bare number) as a refine run writes them; the
  pairs numbered in `long_chains` with a chain four times as long."""
  pairs = tmp_path / "pairs.jsonl"
  with open(pairs, "w") as f:
    for i in range(6):
      prompt = f"Question {i}: what is {i} plus {i}? Let's think step by step."
      chain = f"{i} plus {i} is {2 * i}. " * (12 if i in long_chains else 3)
      f.write(json.dumps({"prompt": prompt, "chosen": chain, "rejected": f"{i}."}) + "\n")
  return pairs


def test_dpo_step_times_every_packing_on_real_pairs(tmp_path, tiny_with_tokenizer):
  pairs = _pairs_file(tmp_path)
  figures = _run(
    tmp_path,
    "dpo_step.py",
    f"--model={tiny_with_tokenizer}",
    f"--pairs_file={pairs}",
    "--packings=none,sides,shared_prompt",
    "--pack_lengths=2",
    "--max_length=96",
    "--batch_size=2",
    "--output_at=every,answers",
  )
  real = figures["real_pairs"]
  assert real["pairs"] == 6 and real["mean_tokens"]["shared_prompt"] > 10
  by_packing = {(run["packing"], run["output_at"]): run for run in real["runs"]}
  assert set(by_packing) == {(p, at) for p in ("none", "sides", "shared_prompt") for at in ("every", "answers")}
  for run in real["runs"]:
    assert _positive(run["pairs_per_s"]) and 0 <= run["padding_share"] < 1
  # One row per side holds the most positions; sharing the prompt the fewest.
  positions = {name: run["positions_per_step"] for (name, at), run in by_packing.items() if at == "every"}
  assert positions["none"] >= positions["sides"] > positions["shared_prompt"]
  # At the answers alone the output layer runs at fewer positions than the rows hold: fewer FLOPs.
  for packing in ("none", "sides", "shared_prompt"):
    every, answers = by_packing[packing, "every"], by_packing[packing, "answers"]
    assert every["answer_positions"] == 0 < answers["answer_positions"] < answers["row_length"]
    assert answers["mfu"] * answers["step_s"] < every["mfu"] * every["step_s"]


def test_dpo_step_times_an_epoch_with_each_batch_holding_only_the_rows_it_needs(tmp_path, tiny_with_tokenizer):
  figures = _run(
    tmp_path,
    "dpo_step.py",
    f"--model={tiny_with_tokenizer}",
    f"--pairs_file={_pairs_file(tmp_path, long_chains=(0, 1))}",
    "--packings=shared_prompt",
    "--pack_lengths=1",
    "--max_length=256",
    "--batch_size=2",
    "--epoch_steps=3",  # one epoch of 6 pairs: batches without a long chain need 1 row, the other 2
  )
  (run,) = figures["real_pairs"]["runs"]
  epoch = run["epoch"]
  own, most = epoch["own_rows"], epoch["most_rows"]
  assert sum(own["rows_per_step"].values()) == sum(most["rows_per_step"].values()) == epoch["steps"] == 3
  assert most["rows_per_step"] == {"2": 3} and own["rows_per_step"] == {"1": 2, "2": 1}
  assert own["rows"] < most["rows"] and epoch["row_share"] == pytest.approx(own["rows"] / most["rows"])
  for way in (own, most):
    assert way["pairs_per_s"] == pytest.approx(3 * 2 / way["seconds"])
  assert epoch["own_rows_speedup"] == pytest.approx(most["seconds"] / own["seconds"])


def test_dpo_step_times_the_control_on_chosen_answers_and_lora_beside_full(tmp_path, tiny_with_tokenizer):
  figures = _run(
    tmp_path,
    "dpo_step.py",
    f"--model={tiny_with_tokenizer}",
    f"--pairs_file={_pairs_file(tmp_path)}",
    "--packings=shared_prompt",
    "--pack_lengths=2",
    "--max_length=96",
    "--batch_size=2",
    "--loss_type=nll",
    "--lora_ranks=0,4",
  )
  runs = {(run["chosen_only"], run["lora_rank"]): run for run in figures["real_pairs"]["runs"]}
  assert set(runs) == {(False, 0), (False, 4), (True, 0), (True, 4)}
  tokens = lambda run: run["positions_per_step"] * (1 - run["padding_share"])
  for rank in (0, 4):  # the chosen answers alone hold fewer tokens than whole pairs
    assert tokens(runs[True, rank]) < tokens(runs[False, rank])
    assert _positive(runs[True, rank]["pairs_per_s"])
  # LoRA's step counts fewer FLOPs (no weight gradients for the base): MFU x time says so.
  work = {rank: runs[False, rank]["mfu"] * runs[False, rank]["step_s"] for rank in (0, 4)}
  assert work[4] < 0.9 * work[0]
