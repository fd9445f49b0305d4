"""SFT step throughput, MFU, compile time and memory, beside PyTorch steps on the same batch.

    python benchmarks/train_step.py                                         # SmolLM2-135M, CPU, float32
    python benchmarks/train_step.py --preset=tinyllama-1.1b --dtype=bfloat16 --sizes=8x2048 \\
        --baseline=torch_eager,torch_compile                                 # on a GPU
    python benchmarks/train_step.py --sizes=8x256 --microbatches=1,4        # with accumulation
    python benchmarks/train_step.py --lora_rank=16 --baseline=peft_eager,peft_compile  # LoRA

Ours: `sft_step` (chunked cross-entropy on every token, AdamW with clipping, state donated),
jitted once over every local device; compile time from `.lower().compile()`, step memory from
the compiled program's memory analysis. Baselines on the same random tokens and architecture:
`torch_eager` — `transformers` with SDPA attention, bfloat16 autocast when ours computes in
bfloat16, `loss.backward()`, `clip_grad_norm_`, AdamW (fused on CUDA); `torch_compile` — the
same model under `torch.compile`. MFU: 3x the forward's matmul FLOPs against every device's
peak (the data sheet on accelerators; a 2048^3 matmul timed in this run on CPU).

With `--lora_rank=R`, ours trains LoRA adapters (rank R, alpha 2R, every projection) over a
frozen base stored in the compute dtype, and the baselines are `peft_eager` and `peft_compile`:
the same `transformers` model, its base in the compute dtype, wrapped by PEFT with the same
adapters (float32, as PEFT keeps them), AdamW over the adapters only. MFU counts the LoRA
step's own FLOPs (no weight gradients for the base: srit_jax/training/flops.py).
"""

from __future__ import annotations

import time

import common
from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["8x256"], "batch x length")
_MICROBATCHES = flags.DEFINE_list("microbatches", ["1"], "gradient-accumulation microbatches to time ours with")
_LORA_RANK = flags.DEFINE_integer("lora_rank", 0, "LoRA adapters of this rank on every projection (0: full)")


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


def ours(model, config, batch, microbatches: int) -> dict:
  """Our step of `config`: the model's own, or `common.lora_config` of it (adapters over `model.params`)."""
  import jax

  from srit_jax import configs, sharding
  from srit_jax.training import optimizer, sft_step

  tx = optimizer.make_optimizer(configs.load("optimizer"), 1000)
  state, base = common.initial_state(model, config, tx)
  step = sft_step.jit_sft_step(state, config, tx, model.mesh, num_microbatches=microbatches)
  on_mesh = sharding.shard_rows(batch, model.mesh)
  start = time.perf_counter()
  compiled = step.lower(state, on_mesh, base).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()

  def one():
    nonlocal state
    state, metrics = compiled(state, on_mesh, base)
    jax.block_until_ready(metrics)

  step_s = common.median_seconds(one)
  common.profile(one)
  return {"step_s": step_s, "compile_s": compile_s, "temp_bytes": int(memory.temp_size_in_bytes)}


def torch_step(config, batch, compiled: bool) -> dict:
  import torch

  device = common.torch_device()
  model = common.torch_model(config.without_adapters())
  if config.lora_rank:
    import peft

    model = model.to(getattr(torch, config.base_param_dtype))  # the frozen base, stored as ours
    adapters = peft.LoraConfig(
      r=config.lora_rank,
      lora_alpha=config.lora_alpha,
      lora_dropout=0.0,
      target_modules=[f"{t}_proj" for t in config.lora_targets],
    )
    model = peft.get_peft_model(model, adapters)  # adapters in float32 (autocast_adapter_dtype)
  model.train()
  fused = device.type == "cuda"
  trainable = [p for p in model.parameters() if p.requires_grad]
  opt = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.0, fused=fused)
  ids = torch.as_tensor(batch["tokens"], dtype=torch.long, device=device)
  labels = torch.as_tensor(batch["targets"], dtype=torch.long, device=device)
  forward = torch.compile(model) if compiled else model

  def one():
    with common.torch_autocast():
      logits = forward(ids).logits
      loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    common.torch_sync()

  start = time.perf_counter()
  one()  # the first step compiles under torch.compile
  first_s = time.perf_counter() - start
  return {
    "step_s": common.median_seconds(one),
    "first_step_s": first_s,
    "peak_memory_bytes": common.torch_peak_memory(),
  }


def main(argv):
  del argv
  from srit_jax.training import flops

  baselines = common.baselines(("peft_eager", "peft_compile") if _LORA_RANK.value else ("torch_eager", "torch_compile"))
  model = common.model()
  config = common.lora_config(model.config, _LORA_RANK.value) if _LORA_RANK.value else model.config
  peak = common.peak_flops()
  results = {"machine": common.machine(), "peak_tflops": peak / 1e12, "runs": []}
  for size in _SIZES.value:
    rows, length = map(int, size.split("x"))
    batch = _batch(rows, length, model.config.vocab_size)
    step_flops = flops.train_step_flops(config, rows, length)
    run = {"batch": rows, "length": length, "lora_rank": _LORA_RANK.value}
    theirs = {
      baseline: common.release_torch(torch_step(config, batch, compiled=baseline.endswith("_compile")))
      for baseline in baselines
    }
    for k in map(int, _MICROBATCHES.value):
      figures = ours(model, config, batch, k)
      figures.update(tokens_per_s=rows * length / figures["step_s"], mfu=step_flops / figures["step_s"] / peak)
      run["ours" if k == 1 else f"ours_{k}_microbatches"] = figures
    for baseline, figures in theirs.items():
      figures.update(tokens_per_s=rows * length / figures["step_s"], mfu=step_flops / figures["step_s"] / peak)
      figures["ours_speedup"] = figures["step_s"] / run["ours"]["step_s"]
      run[baseline] = figures
    results["runs"].append(run)
  common.report(results)


if __name__ == "__main__":
  app.run(main)
