"""Helpers shared by the benchmarks: timing, the in-run matmul peak, and model FLOPs."""

from __future__ import annotations

import platform
import statistics
import time

import jax
import jax.numpy as jnp

from srit_jax.model_config import ModelConfig


def time_call(fn, repeats: int) -> list[float]:
  """Seconds per call of `fn` (which must block until its result is ready)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def median(values):
  return statistics.median(values)


def matmul_peak_flops(size: int = 2048, dtype=jnp.float32, repeats: int = 5) -> float:
  """FLOP/s of a size^3 matmul under XLA on the default device: the peak MFU is measured against."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  seconds = min(time_call(lambda: matmul(a, a).block_until_ready(), repeats))
  return 2 * size**3 / seconds


def forward_flops(config: ModelConfig, batch: int, length: int) -> float:
  """Matmul FLOPs of one forward pass: 2 per weight per token, plus causal attention scores."""
  per_layer = config.embed_dim * (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
  per_layer += config.num_heads * config.head_dim * config.embed_dim + 3 * config.embed_dim * config.mlp_dim
  weights = config.num_layers * per_layer + config.embed_dim * config.vocab_size
  attention = config.num_layers * 2 * 2 * config.num_heads * config.head_dim * length * length / 2
  return batch * (2 * weights * length + attention)


def machine() -> str:
  device = jax.devices()[0]
  return (
    f"{platform.processor() or platform.machine()}, {jax.device_count()} x {device.device_kind}, jax {jax.__version__}"
  )
