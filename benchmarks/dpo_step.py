"""DPO step throughput, MFU, compile time and memory for SmolLM2-135M, beside TRL's DPOTrainer.

    python benchmarks/dpo_step.py                       # 8 pairs x 256 positions per side, float32
    python benchmarks/dpo_step.py --sizes=4x512 --no_trl
    python benchmarks/dpo_step.py --sizes=4x256 --microbatches=2   # ours accumulating over 2 slices

Ours: `dpo_step` (chosen and rejected in one concatenated policy forward, chunked log-probs,
sigmoid loss, AdamW with clipping, state donated), jitted once, in two forms: the frozen
reference run inside the step, and reference log-probs precomputed (passed in the batch).
Compile time from `.lower().compile()`, memory from the compiled executable's analysis
(temporaries; arguments = state + reference + batch). Baseline: TRL's DPOTrainer on the same
model, pair count, lengths, float32 and thread count, with a reference model (and with
`precompute_ref_log_probs`), timing `training_step` + optimizer step on one collated batch.
Every side is prompt (half the row) + answer; the loss covers the answer tokens. Step time
is the median of `repeats` steps after two warm-up steps; MFU counts policy forward+backward
over both sides (+ the reference forward when in the step) against an XLA 2048^3 matmul.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["8x256"], "pairs x positions per side")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed steps")
_TRL = flags.DEFINE_bool("trl", True, "also time TRL's DPOTrainer")
_MICROBATCHES = flags.DEFINE_integer("microbatches", 1, "ours: gradient accumulation over this many slices of pairs")
_OUT = flags.DEFINE_string("out", None, "write the figures as JSON here too")

sys.path.insert(0, str(pathlib.Path(__file__).parent))


def _side(pairs, length, vocab, seed):
  import numpy as np

  tokens = np.random.default_rng(seed).integers(0, vocab, (pairs, length + 1)).astype(np.int32)
  weights = np.zeros((pairs, length), np.float32)
  weights[:, length // 2 :] = 1.0  # answer half
  return {
    "tokens": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (pairs, length)).copy(),
    "segment_ids": np.ones((pairs, length), np.int32),
    "loss_weights": weights,
  }


def _time(fn, repeats):
  import common

  fn()
  fn()
  return common.median(common.time_call(fn, repeats))


def _trl_step_seconds(directory, pairs, length, repeats, precompute):
  import datasets
  import torch
  import transformers
  from trl import DPOConfig, DPOTrainer

  torch.set_num_threads(os.cpu_count() or 1)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
  half = length // 2
  # " a" and " b" are one token each: a prompt of `half` tokens and answers of half - 1 (+ EOS).
  rows = [{"prompt": " a" * half, "chosen": " b" * (half - 1), "rejected": " c" * (half - 1)} for _ in range(pairs)]
  args = DPOConfig(
    output_dir="/tmp/trl_dpo_benchmark",
    per_device_train_batch_size=pairs,
    learning_rate=1e-6,
    beta=0.1,
    max_length=None,
    precompute_ref_log_probs=precompute,
    use_cpu=True,
    report_to=[],
    logging_steps=10_000,
    save_strategy="no",
    dataloader_drop_last=True,
  )
  trainer = DPOTrainer(
    model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tokenizer
  )
  if precompute:  # one pass over the pairs, as TRL does before training
    trainer.get_train_dataloader()
  trainer.create_optimizer_and_scheduler(num_training_steps=100)
  trainer.current_gradient_accumulation_steps = 1  # set by `train()`, which we bypass to time one step
  batch = next(iter(trainer.get_train_dataloader()))
  assert batch["input_ids"].shape == (2 * pairs, length), batch["input_ids"].shape
  model.train()

  def step():
    trainer.training_step(model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)

  return _time(step, repeats)


def _time_ours(compiled, state, reference, batch, repeats):
  import jax

  def one_step():
    nonlocal state
    state, metrics = compiled(state, reference, batch)
    jax.block_until_ready(metrics)

  return _time(one_step, repeats)


def main(argv):
  del argv
  import common
  import jax
  import numpy as np

  from srit_jax import configs
  from srit_jax.conversion import fetch, loading
  from srit_jax.training import dpo_step as dpo
  from srit_jax.training import flops, optimizer
  from srit_jax.training import sft_step as train_step
  from srit_jax.training.state import create_train_state

  directory = fetch.fetch_model("smollm2-135m-instruct")
  model = loading.load_model(directory)
  tx = optimizer.make_optimizer(configs.load("optimizer"), total_steps=1000)
  peak = flops.measured_matmul_peak()
  results = {"machine": common.machine(), "dtype": "float32", "matmul_peak_gflops": peak / 1e9, "runs": []}
  for size in _SIZES.value:
    pairs, length = map(int, size.split("x"))
    batch = {
      "chosen": _side(pairs, length, model.config.vocab_size, 0),
      "rejected": _side(pairs, length, model.config.vocab_size, 1),
    }
    reference = jax.tree.map(lambda x: x.copy(), model.params)
    run = {"pairs": pairs, "length_per_side": length, "microbatches": _MICROBATCHES.value}
    for name, precomputed in (("in_step_reference", False), ("precomputed_reference", True)):
      step_batch = dict(batch)
      if precomputed:
        chosen, rejected = jax.jit(lambda p, b: dpo.reference_log_probs(model.config, p, b))(reference, batch)
        step_batch.update(ref_chosen_logps=np.asarray(chosen), ref_rejected_logps=np.asarray(rejected))
      state = create_train_state(jax.tree.map(lambda x: x.copy(), model.params), tx)
      step = jax.jit(
        lambda s, r, b: dpo.dpo_step(
          s, r, b, config=model.config, optimizer=tx, beta=0.1, num_microbatches=_MICROBATCHES.value
        ),
        donate_argnums=(0,),
      )
      ref_arg = None if precomputed else reference
      start = time.perf_counter()
      compiled = step.lower(state, ref_arg, step_batch).compile()
      compile_s = time.perf_counter() - start
      memory = compiled.memory_analysis()

      seconds = _time_ours(compiled, state, ref_arg, step_batch, _REPEATS.value)
      run[name] = {
        "step_s": seconds,
        "pairs_per_s": pairs / seconds,
        "tokens_per_s": 2 * pairs * length / seconds,
        "mfu": flops.dpo_step_flops(model.config, pairs, length, not precomputed) / seconds / peak,
        "compile_s": compile_s,
        "temp_bytes": int(memory.temp_size_in_bytes) if memory else None,
        "argument_bytes": int(memory.argument_size_in_bytes) if memory else None,
      }
      if _TRL.value:
        trl_seconds = _trl_step_seconds(directory, pairs, length, _REPEATS.value, precomputed)
        run[name].update(
          trl_step_s=trl_seconds, trl_pairs_per_s=pairs / trl_seconds, speedup_vs_trl=trl_seconds / seconds
        )
      print(json.dumps({name: run[name]}), flush=True)
    # The SFT step on the same rows (2 x pairs), for the memory comparison of the issue.
    sft_batch = {k: np.concatenate([batch["chosen"][k], batch["rejected"][k]]) for k in batch["chosen"]}
    state = create_train_state(jax.tree.map(lambda x: x.copy(), model.params), tx)
    sft = jax.jit(lambda s, b: train_step.sft_step(s, b, config=model.config, optimizer=tx), donate_argnums=(0,))
    memory = sft.lower(state, sft_batch).compile().memory_analysis()
    run["sft_step_same_rows_temp_bytes"] = int(memory.temp_size_in_bytes) if memory else None
    run["reference_param_bytes"] = int(sum(x.nbytes for x in jax.tree.leaves(reference)))
    results["runs"].append(run)
  common.report(results, _OUT.value)


if __name__ == "__main__":
  app.run(main)
