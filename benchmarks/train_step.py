"""SFT step throughput, MFU, compile time and memory for SmolLM2-135M, beside a PyTorch step.

    python benchmarks/train_step.py                      # 8 x 256 and 8 x 512, float32
    python benchmarks/train_step.py --sizes=4x1024
    python benchmarks/train_step.py --sizes=8x256 --microbatches=1,4   # also with accumulation

Ours: `sft_step` (chunked cross-entropy on every token, AdamW with clipping and the decay
mask, state donated), jitted once; compile time from `.lower().compile()`, memory from the
compiled executable's memory analysis. Baseline: `transformers` LlamaForCausalLM on the same
token ids, `loss = model(ids, labels=ids).loss`, `loss.backward()`, `clip_grad_norm_`,
`torch.optim.AdamW` step, float32, same thread count. Step time is the median of `repeats`
steps after two warm-up steps. MFU counts 3x the forward's matmul FLOPs against a 2048^3
float32 matmul timed under XLA in the same run.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["8x256", "8x512"], "batch x length")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed steps")
_MICROBATCHES = flags.DEFINE_list(
  "microbatches", ["1"], "gradient-accumulation microbatches per step to time ours with (same batch, same update)"
)
_TORCH = flags.DEFINE_bool("torch", True, "also time the PyTorch step")
_OUT = flags.DEFINE_string("out", None, "write the figures as JSON here too")

sys.path.insert(0, str(pathlib.Path(__file__).parent))


def _batch(batch, length, vocab):
  import numpy as np

  tokens = np.random.default_rng(0).integers(0, vocab, (batch, length + 1)).astype(np.int32)
  ones = np.ones((batch, length), np.int32)
  return {
    "tokens": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
    "segment_ids": ones,
    "loss_weights": ones.astype(np.float32),
  }


def _torch_step_seconds(directory, batch, repeats):
  import common
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count() or 1)
  model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
  ids = torch.as_tensor(batch["tokens"], dtype=torch.long)
  labels = torch.as_tensor(batch["targets"], dtype=torch.long)

  def step():
    opt.zero_grad(set_to_none=True)
    logits = model(ids).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  step()
  step()
  return common.median(common.time_call(step, repeats))


def _time_ours(compiled, state, batch, repeats):
  import common
  import jax

  def one_step():
    nonlocal state
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)

  one_step()
  one_step()
  return common.median(common.time_call(one_step, repeats))


def main(argv):
  del argv
  import common
  import jax

  from srit_jax import configs
  from srit_jax.conversion import fetch, loading
  from srit_jax.training import flops, optimizer
  from srit_jax.training import sft_step as train_step
  from srit_jax.training.state import create_train_state

  directory = fetch.fetch_model("smollm2-135m-instruct")
  model = loading.load_model(directory)
  config = configs.load("optimizer")
  tx = optimizer.make_optimizer(config, total_steps=1000)
  peak = flops.measured_matmul_peak()
  results = {"machine": common.machine(), "dtype": "float32", "matmul_peak_gflops": peak / 1e9, "runs": []}
  for size in _SIZES.value:
    batch_size, length = map(int, size.split("x"))
    batch = _batch(batch_size, length, model.config.vocab_size)
    tokens = batch_size * length
    runs = []
    for microbatches in map(int, _MICROBATCHES.value):
      state = create_train_state(jax.tree.map(lambda x: x.copy(), model.params), tx)
      step = jax.jit(
        lambda s, b, k=microbatches: train_step.sft_step(s, b, config=model.config, optimizer=tx, num_microbatches=k),
        donate_argnums=(0,),
      )
      start = time.perf_counter()
      compiled = step.lower(state, batch).compile()
      compile_s = time.perf_counter() - start
      memory = compiled.memory_analysis()

      seconds = _time_ours(compiled, state, batch, _REPEATS.value)
      run = {
        "batch": batch_size,
        "length": length,
        "microbatches": microbatches,
        "ours_step_s": seconds,
        "ours_tokens_per_s": tokens / seconds,
        "ours_mfu": flops.train_step_flops(model.config, batch_size, length) / seconds / peak,
        "ours_compile_s": compile_s,
        "ours_temp_bytes": int(memory.temp_size_in_bytes) if memory else None,
        "ours_argument_bytes": int(memory.argument_size_in_bytes) if memory else None,
      }
      runs.append(run)
    torch_seconds = _torch_step_seconds(directory, batch, _REPEATS.value) if _TORCH.value else None
    for run in runs:
      if torch_seconds is not None:
        run.update(
          torch_step_s=torch_seconds,
          torch_tokens_per_s=tokens / torch_seconds,
          speedup_vs_torch=torch_seconds / run["ours_step_s"],
        )
      results["runs"].append(run)
      print(json.dumps(run), flush=True)
  common.report(results, _OUT.value)


if __name__ == "__main__":
  app.run(main)
