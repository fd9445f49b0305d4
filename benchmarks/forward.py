"""Forward-pass throughput and compile time, beside `transformers` on the same tokens.

    python benchmarks/forward.py                                             # SmolLM2-135M, CPU, 8 x 512
    python benchmarks/forward.py --preset=tinyllama-1.1b --dtype=bfloat16 --baseline=torch_eager

Reports tokens/s and MFU of our jitted forward over every local device, its compile time beside
that of a 2-layer (1 when it has 2) model of the same width (layers are scanned, so compile time should not grow
with depth), and `torch_eager`: `transformers` (SDPA) under `no_grad` on the same architecture.
"""

from __future__ import annotations

import dataclasses
import time

import common
from absl import app, flags

_BATCH = flags.DEFINE_integer("batch", 8, "rows per forward")
_LENGTH = flags.DEFINE_integer("length", 512, "tokens per row")


def _compile_seconds(config, params, tokens, mesh) -> float:
  from srit_jax.model import decoder

  start = time.perf_counter()
  decoder.forward.lower(config, params, tokens, mesh=mesh).compile()
  return time.perf_counter() - start


def main(argv):
  del argv
  import jax
  import numpy as np

  from srit_jax import sharding
  from srit_jax.model import decoder
  from srit_jax.training import flops

  baselines = common.baselines(("torch_eager",))
  model = common.model()
  rows, length = _BATCH.value, _LENGTH.value
  tokens = np.random.default_rng(0).integers(3, model.config.vocab_size, (rows, length)).astype(np.int32)
  on_mesh = sharding.shard_rows(tokens, model.mesh)
  shallow = dataclasses.replace(model.config, num_layers=1 if model.config.num_layers <= 2 else 2)
  shallow_params = decoder.init_params(shallow, jax.random.key(1), model.mesh)
  results = {
    "machine": common.machine(),
    "batch": rows,
    "length": length,
    "compile_s": _compile_seconds(model.config, model.params, on_mesh, model.mesh),
    "layers": model.config.num_layers,
    "compile_s_shallow": _compile_seconds(shallow, shallow_params, on_mesh, model.mesh),
    "shallow_layers": shallow.num_layers,
  }
  seconds = common.median_seconds(
    lambda: jax.block_until_ready(decoder.forward(model.config, model.params, on_mesh, mesh=model.mesh))
  )
  peak = common.peak_flops()
  results["ours"] = {
    "step_s": seconds,
    "tokens_per_s": rows * length / seconds,
    "mfu": flops.forward_flops(model.config, rows, length) / seconds / peak,
  }
  for baseline in baselines:
    import torch

    torch_model = common.torch_model(model.config).eval()
    ids = torch.as_tensor(tokens, dtype=torch.long, device=common.torch_device())

    def call(torch_model=torch_model, ids=ids):
      with torch.no_grad(), common.torch_autocast():
        torch_model(ids)
      common.torch_sync()

    torch_seconds = common.median_seconds(call)
    results[baseline] = {
      "step_s": torch_seconds,
      "tokens_per_s": rows * length / torch_seconds,
      "ours_speedup": torch_seconds / seconds,
    }
  common.report(results)


if __name__ == "__main__":
  app.run(main)
