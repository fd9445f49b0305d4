"""Model FLOPs (the MFU numerator) against XLA's own count of the compiled programs: the forward,
the full fine-tuning step's gradients, and the LoRA step's (no weight gradients for the frozen
base), on a one-layer model (XLA counts a scanned layer once, so one layer is counted exactly)."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from srit_jax.model import decoder, presets
from srit_jax.training import flops, losses, sft_step

BATCH, LENGTH = 2, 64
BASE = dataclasses.replace(
  presets.get_preset("tiny"), num_layers=1, vocab_size=512, embed_dim=256, mlp_dim=1024, num_heads=4, num_kv_heads=2
)
LORA = dataclasses.replace(BASE, lora_rank=8)


def _batch():
  ones = jnp.ones((BATCH, LENGTH), jnp.int32)
  return {
    "tokens": 0 * ones,
    "targets": 0 * ones,
    "positions": jnp.broadcast_to(jnp.arange(LENGTH), (BATCH, LENGTH)),
    "segment_ids": ones,
    "loss_weights": ones.astype(jnp.float32),
  }


def _xla_flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


def _loss(config, trained, base=None):
  return sft_step.batch_nll_sum(trained, _batch(), config=config, mesh=None, chunk_size=LENGTH, base=base)


@pytest.fixture(scope="module")
def trees():
  params = jax.eval_shape(lambda: decoder.init_params(BASE, jax.random.key(0)))
  adapters = jax.eval_shape(lambda: decoder.init_adapters(LORA, jax.random.key(0)))
  return params, adapters


def test_adapter_parameters_count_the_adapter_tree(trees):
  _, adapters = trees
  assert flops.adapter_parameters(LORA) == sum(leaf.size for leaf in jax.tree.leaves(adapters))
  assert flops.adapter_parameters(BASE) == 0


def test_forward_and_full_step_flops_match_xla(trees):
  params, _ = trees
  forward = _xla_flops(lambda p: _loss(BASE, p), params)
  step = _xla_flops(jax.grad(lambda p: _loss(BASE, p)), params)
  assert flops.forward_flops(BASE, BATCH, LENGTH) == pytest.approx(forward, rel=0.05)
  assert flops.train_step_flops(BASE, BATCH, LENGTH) == pytest.approx(step, rel=0.05)


def test_the_output_layer_at_some_positions_is_counted_at_those_alone(trees):
  params, _ = trees
  some = LENGTH // 4
  at = jnp.broadcast_to(jnp.arange(some), (BATCH, some))
  loss = lambda p: -jnp.sum(losses.token_log_probs(BASE, p, _batch(), chunk_size=LENGTH, at=at))
  forward, step = _xla_flops(loss, params), _xla_flops(jax.grad(loss), params)
  assert flops.forward_flops(BASE, BATCH, LENGTH, some) == pytest.approx(forward, rel=0.02)
  assert flops.train_step_flops(BASE, BATCH, LENGTH, some) == pytest.approx(step, rel=0.02)
  everywhere = _xla_flops(jax.grad(lambda p: _loss(BASE, p)), params)
  assert step < everywhere - 0.5 * 3 * 2 * BATCH * (LENGTH - some) * BASE.embed_dim * BASE.vocab_size


def test_lora_step_flops_leave_out_the_frozen_base_gradients(trees):
  params, adapters = trees
  step = _xla_flops(jax.grad(lambda a, p: _loss(LORA, a, base=p)), adapters, params)
  assert flops.train_step_flops(LORA, BATCH, LENGTH) == pytest.approx(step, rel=0.05)
  # a third less than full fine-tuning, not the same figure
  assert flops.train_step_flops(LORA, BATCH, LENGTH) < 0.75 * flops.train_step_flops(BASE, BATCH, LENGTH)


def test_a_cpu_devices_peak_is_its_share_of_the_measured_matmul_speed_unless_one_is_given(monkeypatch):
  """The suite fixes the peak ($SRIT_JAX_DEVICE_PEAK_FLOPS, conftest.py); unset, a CPU device's
  peak is the measured float32 matmul speed shared among the emulated devices."""
  monkeypatch.delenv("SRIT_JAX_DEVICE_PEAK_FLOPS")
  measured = flops.measured_matmul_peak(dtype="float32")
  assert 1e8 < measured < 1e14  # FLOP/s of this CPU: between a tenth of a GFLOP/s and 100 TFLOP/s
  assert flops.per_device_peak_flops() == measured / jax.local_device_count()
  assert flops.peak_flops() == measured / jax.local_device_count() * jax.device_count()
  monkeypatch.setenv("SRIT_JAX_DEVICE_PEAK_FLOPS", "3e12")
  assert flops.per_device_peak_flops() == 3e12 and flops.peak_flops() == 3e12 * jax.device_count()
