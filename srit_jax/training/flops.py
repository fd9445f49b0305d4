"""Model FLOPs and device peaks, for model FLOPs utilisation (MFU) in logs and benchmarks."""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp

from srit_jax.model.config import ModelConfig

# Dense bf16 peak per chip, from the vendors' data sheets.
_PEAK_BF16 = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100": 312e12,
}


def _forward_parts(
  config: ModelConfig, batch: int, length: int, output_positions: int | None = None
) -> tuple[float, float]:
  """(weight matmuls, causal attention) FLOPs of one forward pass: 2 per weight per token (the
  output layer's at `output_positions` a row, when it runs at fewer than all)."""
  per_layer = config.embed_dim * (config.num_heads + 2 * config.num_kv_heads) * config.head_dim
  per_layer += config.num_heads * config.head_dim * config.embed_dim + 3 * config.embed_dim * config.mlp_dim
  output = config.embed_dim * config.vocab_size * (length if output_positions is None else output_positions)
  attention = config.num_layers * 2 * 2 * config.num_heads * config.head_dim * length * length / 2
  return batch * 2 * (config.num_layers * per_layer * length + output), batch * attention


def forward_flops(config: ModelConfig, batch: int, length: int, output_positions: int | None = None) -> float:
  """Matmul FLOPs of one forward pass: 2 per weight per token, plus causal attention."""
  return sum(_forward_parts(config, batch, length, output_positions))


def adapter_parameters(config: ModelConfig) -> int:
  """LoRA adapter weights (A and B of every targeted projection of every layer); 0 without LoRA."""
  if not config.lora_rank:
    return 0
  per_layer = sum(config.lora_rank * sum(config.projection_shape(t)) for t in config.lora_targets)
  return config.num_layers * per_layer


def train_step_flops(config: ModelConfig, batch: int, length: int, output_positions: int | None = None) -> float:
  """Forward plus backward. Full fine-tuning: the backward is twice the forward (gradients of
  the activations and of the weights). Under LoRA the frozen base gets no weight gradients:
  its matmuls run twice (forward, activation gradients), attention three times, and each
  adapter weight costs 6 FLOPs a token."""
  weights, attention = _forward_parts(config, batch, length, output_positions)
  if not config.lora_rank:
    return 3 * (weights + attention)
  return 2 * weights + 3 * attention + 6 * adapter_parameters(config) * batch * length


@functools.cache
def measured_matmul_peak(size: int = 2048, dtype: str = "float32") -> float:
  """FLOP/s of a size^3 matmul under XLA on the default device."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def per_device_peak_flops(dtype: str = "bfloat16") -> float:
  """One device's peak FLOP/s: the data sheet for known accelerators, measured on CPU.

  On CPU the emulated devices share the processor, so each is given an equal share of the
  matmul speed measured in this process. $SRIT_JAX_DEVICE_PEAK_FLOPS, when set, replaces
  both (for accelerators missing from the table, or a fixed figure).
  """
  if os.environ.get("SRIT_JAX_DEVICE_PEAK_FLOPS"):
    return float(os.environ["SRIT_JAX_DEVICE_PEAK_FLOPS"])
  device = jax.devices()[0]
  if device.platform == "cpu":
    # bf16 on XLA:CPU is slower, not a higher peak: float32 is the CPU's peak.
    return measured_matmul_peak(dtype="float32") / jax.local_device_count()
  for name, peak in _PEAK_BF16.items():
    if device.device_kind.startswith(name):
      return peak * (0.5 if dtype == "float32" else 1.0)
  return float("nan")


def peak_flops(dtype: str = "bfloat16") -> float:
  """The peak FLOP/s of every device of the run, all processes together: the MFU denominator
  for a step whose FLOPs count the global batch."""
  return per_device_peak_flops(dtype) * jax.device_count()


def dpo_step_flops(
  config: ModelConfig, rows: int, length: int, in_step_reference: bool, output_positions: int | None = None
) -> float:
  """Policy forward and backward over the step's rows of pairs (2 per pair unpacked; fewer packed),
  plus the reference forward when it runs in the step; the output layer at `output_positions` a
  row where it runs at the answers alone."""
  flops = train_step_flops(config, rows, length, output_positions)
  return flops + (forward_flops(config, rows, length, output_positions) if in_step_reference else 0.0)
