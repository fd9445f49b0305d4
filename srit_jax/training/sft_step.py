"""The pure SFT step, jitted once with explicit shardings.

`sft_step(state, batch) -> (state, metrics)`: cross-entropy on answer tokens, computed in
chunks; gradients accumulated over `num_microbatches` slices of the batch inside the step
(the loss is normalised by the whole batch's weight, so k microbatches equal one batch);
parameters kept in `param_dtype` (float32 master weights) while the forward runs in the
model's compute dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from srit_jax import sharding
from srit_jax.model import decoder
from srit_jax.model.config import ModelConfig
from srit_jax.training import losses
from srit_jax.training.state import (
  TrainState,
  accumulated_value_and_grad,
  apply_gradients,
  param_shardings,
  state_shardings,
)

BATCH_FIELDS = ("tokens", "targets", "positions", "segment_ids", "loss_weights")


def batch_nll_sum(params, micro, *, config: ModelConfig, mesh, chunk_size: int, base=None, dropout_rng=None):
  """Weighted NLL sum of a (micro)batch; the loss divides it by the whole batch's weight.

  `params` is the trained tree: all parameters, or LoRA adapters over `base`. With
  `dropout_rng`, adapter dropout is on.
  """
  log_probs = losses.token_log_probs(
    config, params, micro, mesh=mesh, chunk_size=chunk_size, base=base, dropout_rng=dropout_rng
  )
  return losses.weighted_nll_sum(log_probs, micro["loss_weights"])


def dropout_rng(config: ModelConfig, step):
  """The step's key for adapter dropout (None when there is none to apply)."""
  return jax.random.fold_in(jax.random.key(0), step) if config.lora_rank and config.lora_dropout else None


def sft_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  base=None,
  *,
  config: ModelConfig,
  optimizer: optax.GradientTransformation,
  num_microbatches: int = 1,
  chunk_size: int = 128,
  mesh: Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  total_weight = jnp.maximum(jnp.sum(batch["loss_weights"]), 1e-6)

  rng = dropout_rng(config, state.step)

  def nll_sum_and_nothing(params, micro):
    nll = batch_nll_sum(params, micro, config=config, mesh=mesh, chunk_size=chunk_size, base=base, dropout_rng=rng)
    return nll, ()

  loss_and_grad = jax.value_and_grad(nll_sum_and_nothing, has_aux=True)
  (nll_sum, _), grads = accumulated_value_and_grad(
    loss_and_grad, state.params, batch, num_microbatches, param_shardings(config, mesh)
  )
  grads = jax.tree.map(lambda g: (g / total_weight).astype(g.dtype), grads)
  metrics = {
    "loss": nll_sum / total_weight,
    "grad_norm": optax.tree.norm(grads),
    "loss_tokens": jnp.sum(batch["loss_weights"] > 0),
    "tokens": jnp.sum(batch["segment_ids"] > 0),
  }
  return apply_gradients(state, grads, optimizer), metrics


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
  return {name: sharding.row_sharding(mesh, 2) for name in BATCH_FIELDS}


def base_shardings(config: ModelConfig, mesh: Mesh):
  """The frozen base's shardings under LoRA (None in full fine-tuning: there is no base argument)."""
  return sharding.tree_shardings(decoder.boxed_param_shapes(config), mesh) if config.lora_rank else None


def jit_sft_step(
  state: TrainState,
  config: ModelConfig,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
  *,
  num_microbatches: int = 1,
  chunk_size: int = 128,
):
  """`sft_step(state, batch, base)` jitted with explicit in/out shardings and a donated state; the
  frozen LoRA base (None in full fine-tuning) is its own argument, never donated."""
  shardings = state_shardings(state, config, mesh)
  step = functools.partial(
    sft_step, config=config, optimizer=optimizer, num_microbatches=num_microbatches, chunk_size=chunk_size, mesh=mesh
  )
  return jax.jit(
    step,
    in_shardings=(shardings, batch_shardings(mesh), base_shardings(config, mesh)),
    out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
    donate_argnames=("state",),
  )
