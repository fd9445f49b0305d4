"""Forward-pass throughput and compile time of SmolLM2-135M, beside transformers (PyTorch) in the same run.

    python benchmarks/forward.py                        # batch 8 x 512, float32
    python benchmarks/forward.py --batch=1 --length=128

Reports: conversion time (GGUF -> HF directory, HF directory -> parameters), compile time of
the 30-layer model and of a 2-layer one (layers are scanned, so it should not grow with
depth), steady-state tokens/s and MFU of our forward, and tokens/s of `transformers`'
LlamaForCausalLM on the same tokens with the same thread count. MFU is against a float32
2048^3 matmul measured under XLA in the same run on CPU.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import tempfile
import time

from absl import app, flags

_BATCH = flags.DEFINE_integer("batch", 8, "rows per forward")
_LENGTH = flags.DEFINE_integer("length", 512, "tokens per row")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls after warm-up")
_TORCH = flags.DEFINE_bool("torch", True, "also time transformers (PyTorch) on the same input")
_OUT = flags.DEFINE_string("out", None, "write the figures as JSON here too")


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  import common

  from srit_jax.conversion import fetch, hf_checkpoint
  from srit_jax.model import decoder as model_lib
  from srit_jax.training import flops

  results = {"machine": common.machine(), "batch": _BATCH.value, "length": _LENGTH.value, "dtype": "float32"}
  directory = fetch.fetch_model("smollm2-135m-instruct")
  with tempfile.TemporaryDirectory() as scratch:
    start = time.perf_counter()
    fetch.convert_gguf_to_hf(fetch.gguf_path(directory), pathlib.Path(scratch))
    results["convert_gguf_to_hf_s"] = time.perf_counter() - start
  start = time.perf_counter()
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  jax.block_until_ready(params)
  results["load_hf_dir_s"] = time.perf_counter() - start

  tokens = jnp.asarray(
    np.random.default_rng(0).integers(0, config.vocab_size, (_BATCH.value, _LENGTH.value)), jnp.int32
  )

  def compile_seconds(cfg, p):
    start = time.perf_counter()
    compiled = model_lib.forward.lower(cfg, p, tokens).compile()
    return time.perf_counter() - start, compiled

  results["compile_30_layers_s"], compiled = compile_seconds(config, params)
  shallow = dataclasses.replace(config, num_layers=2)
  shallow_params = jax.tree.map(lambda x: x[:2] if x.ndim and x.shape[0] == config.num_layers else x, params)
  results["compile_2_layers_s"], _ = compile_seconds(shallow, shallow_params)

  compiled(params, tokens).block_until_ready()
  seconds = common.median(common.time_call(lambda: compiled(params, tokens).block_until_ready(), _REPEATS.value))
  n_tokens = _BATCH.value * _LENGTH.value
  peak = flops.measured_matmul_peak()
  results.update(
    ours_tokens_per_s=n_tokens / seconds,
    ours_step_s=seconds,
    matmul_peak_gflops=peak / 1e9,
    ours_mfu=flops.forward_flops(config, _BATCH.value, _LENGTH.value) / seconds / peak,
  )
  memory = compiled.memory_analysis()
  if memory is not None:
    results["ours_temp_bytes"] = int(memory.temp_size_in_bytes)

  if _TORCH.value:
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    torch_tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)

    def torch_forward():
      with torch.no_grad():
        return reference(torch_tokens).logits

    torch_forward()
    torch_seconds = common.median(common.time_call(torch_forward, _REPEATS.value))
    results.update(
      torch_tokens_per_s=n_tokens / torch_seconds,
      torch_step_s=torch_seconds,
      torch_threads=torch.get_num_threads(),
      torch_attention=reference.config._attn_implementation,
      speedup_vs_torch=torch_seconds / seconds,
    )

  common.report(results, _OUT.value)


if __name__ == "__main__":
  app.run(main)
