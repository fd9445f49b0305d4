"""Direct Preference Optimization: the losses and the pure `dpo_step` against a frozen reference.

The losses take summed log-probabilities of whole answers (policy and reference, chosen and
rejected) and apply beta in one place. The step runs chosen and rejected rows through the
policy in one concatenated forward; the reference is its own argument — never donated,
never given optimizer state — run in the same jit under `stop_gradient`, unless the batch
carries reference log-probabilities precomputed in one pass over fixed pairs.

Shapes: B pairs, L row length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from srit_jax import sharding
from srit_jax.model.config import ModelConfig
from srit_jax.training import losses, sft_step
from srit_jax.training.state import (
  TrainState,
  accumulated_value_and_grad,
  apply_gradients,
  param_shardings,
  state_shardings,
)

LOSS_TYPES = ("sigmoid", "ipo", "hinge")
SIDE_FIELDS = ("tokens", "targets", "positions", "segment_ids", "loss_weights")
REFERENCE_FIELDS = ("ref_chosen_logps", "ref_rejected_logps")


def dpo_loss(
  policy_chosen_logps_B,
  policy_rejected_logps_B,
  ref_chosen_logps_B,
  ref_rejected_logps_B,
  *,
  beta: float,
  loss_type: str = "sigmoid",
  label_smoothing: float = 0.0,
):
  """(per-pair loss [B], chosen reward [B], rejected reward [B]).

  sigmoid: -(1 - ε) log σ(β h) - ε log σ(-β h) (ε = label smoothing: robust/cDPO);
  ipo: (h - 1 / (2β))²; hinge: max(0, 1 - β h); where h is the policy's log-ratio margin
  minus the reference's.
  """
  f32 = jnp.float32
  chosen_ratio_B = policy_chosen_logps_B.astype(f32) - ref_chosen_logps_B.astype(f32)
  rejected_ratio_B = policy_rejected_logps_B.astype(f32) - ref_rejected_logps_B.astype(f32)
  margin_B = chosen_ratio_B - rejected_ratio_B
  if loss_type == "sigmoid":
    per_pair = -(1 - label_smoothing) * jax.nn.log_sigmoid(beta * margin_B) - label_smoothing * jax.nn.log_sigmoid(
      -beta * margin_B
    )
  elif loss_type == "ipo":
    per_pair = (margin_B - 1 / (2 * beta)) ** 2
  elif loss_type == "hinge":
    per_pair = jax.nn.relu(1 - beta * margin_B)
  else:
    raise ValueError(f"loss_type {loss_type!r} is not one of {LOSS_TYPES}")
  return per_pair, beta * chosen_ratio_B, beta * rejected_ratio_B


def pair_metrics(per_pair_B, chosen_rewards_B, rejected_rewards_B) -> dict:
  """Mean loss and rewards of a set of pairs (the step's metrics and the held-out ones)."""
  margins_B = chosen_rewards_B - rejected_rewards_B
  return {
    "loss": jnp.mean(per_pair_B),
    "rewards/chosen": jnp.mean(chosen_rewards_B),
    "rewards/rejected": jnp.mean(rejected_rewards_B),
    "rewards/margins": jnp.mean(margins_B),
    "rewards/accuracies": jnp.mean((margins_B > 0).astype(jnp.float32)),
  }


def sequence_log_probs(
  config: ModelConfig, params, side: dict, *, mesh=None, chunk_size: int = 128, base=None, dropout_rng=None
):
  """Summed answer-token log-probabilities per row [B] (and answer-token counts [B]).

  `params`: all parameters, or LoRA adapters over `base`.
  """
  token_log_probs = losses.token_log_probs(
    config, params, side, mesh=mesh, chunk_size=chunk_size, base=base, dropout_rng=dropout_rng
  )
  weights = side["loss_weights"].astype(jnp.float32)
  return jnp.sum(token_log_probs * weights, axis=-1), jnp.sum(weights, axis=-1)


def _concat(chosen: dict, rejected: dict) -> dict:
  return {k: jnp.concatenate([chosen[k], rejected[k]], axis=0) for k in SIDE_FIELDS}


def reference_log_probs(config: ModelConfig, ref_params, batch: dict, *, mesh=None, chunk_size: int = 128, base=None):
  """(chosen, rejected) reference log-probs [B] — the one-pass precomputation over fixed pairs.

  Under LoRA the reference is its adapters (`ref_params`) over the one shared `base`.
  """
  logps, _ = sequence_log_probs(
    config, ref_params, _concat(batch["chosen"], batch["rejected"]), mesh=mesh, chunk_size=chunk_size, base=base
  )
  num_pairs = batch["chosen"]["tokens"].shape[0]
  return logps[:num_pairs], logps[num_pairs:]


def dpo_step(
  state: TrainState,
  ref_params,
  batch: dict,
  base=None,
  *,
  config: ModelConfig,
  optimizer: optax.GradientTransformation,
  beta: float = 0.1,
  loss_type: str = "sigmoid",
  label_smoothing: float = 0.0,
  nll_weight: float = 0.0,
  num_microbatches: int = 1,
  chunk_size: int = 128,
  mesh: Mesh | None = None,
):
  """One DPO update. `batch` = {"chosen": side, "rejected": side} (+ precomputed reference log-probs).

  In full fine-tuning `ref_params` is the frozen reference model; under LoRA it is the frozen
  reference adapters (the SFT student's), over the same frozen `base` as the policy's.

  With `num_microbatches` > 1 the pairs go through the policy (and the reference) in that many
  slices inside the step and their gradients are summed: the same update as one pass, with a
  fraction of the activation memory.
  """
  num_pairs = batch["chosen"]["tokens"].shape[0]
  chosen_weight = jnp.maximum(jnp.sum(batch["chosen"]["loss_weights"].astype(jnp.float32)), 1.0)
  precomputed = all(k in batch for k in REFERENCE_FIELDS)
  if not precomputed:
    ref_params = jax.lax.stop_gradient(ref_params)  # the frozen reference: no gradient flows into it
  rng = sft_step.dropout_rng(config, state.step)

  def loss_fn(params, micro):
    """This slice's share of the batch loss: its pairs' losses over the whole batch's count."""
    if precomputed:
      ref_chosen, ref_rejected = micro["ref_chosen_logps"], micro["ref_rejected_logps"]
    else:
      ref_chosen, ref_rejected = reference_log_probs(
        config, ref_params, micro, mesh=mesh, chunk_size=chunk_size, base=base
      )
    logps, _ = sequence_log_probs(
      config,
      params,
      _concat(micro["chosen"], micro["rejected"]),
      mesh=mesh,
      chunk_size=chunk_size,
      base=base,
      dropout_rng=rng,
    )
    chosen, rejected = jnp.split(logps, 2)
    per_pair, chosen_rewards, rejected_rewards = dpo_loss(
      chosen, rejected, ref_chosen, ref_rejected, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing
    )
    loss = jnp.sum(per_pair) / num_pairs
    if nll_weight:
      loss += nll_weight * -jnp.sum(chosen) / chosen_weight
    return loss, (per_pair, chosen, rejected, chosen_rewards, rejected_rewards)

  loss_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, per_pair_values), grads = accumulated_value_and_grad(
    loss_and_grad, state.params, batch, num_microbatches, param_shardings(config, mesh)
  )
  per_pair, chosen, rejected, chosen_rewards, rejected_rewards = per_pair_values
  metrics = pair_metrics(per_pair, chosen_rewards, rejected_rewards) | {
    "loss": loss,  # with the NLL term, when there is one
    "grad_norm": optax.tree.norm(grads),
    "logps/chosen": jnp.mean(chosen),
    "logps/rejected": jnp.mean(rejected),
    "tokens": jnp.sum(batch["chosen"]["segment_ids"] > 0) + jnp.sum(batch["rejected"]["segment_ids"] > 0),
  }
  return apply_gradients(state, grads, optimizer), metrics


def pair_batch_shardings(mesh: Mesh, precomputed_reference: bool) -> dict:
  side = dict.fromkeys(SIDE_FIELDS, sharding.row_sharding(mesh, 2))
  shardings = {"chosen": side, "rejected": dict(side)}
  if precomputed_reference:
    shardings.update(dict.fromkeys(REFERENCE_FIELDS, sharding.row_sharding(mesh, 1)))
  return shardings


def jit_dpo_step(state, config: ModelConfig, optimizer, mesh: Mesh, *, precomputed_reference: bool, **loss_options):
  """`dpo_step(state, reference, batch, base)` jitted with explicit shardings: the state donated; the
  reference (sharded like the trained tree) and the LoRA base never donated."""
  shardings = state_shardings(state, config, mesh)
  step = functools.partial(dpo_step, config=config, optimizer=optimizer, mesh=mesh, **loss_options)
  return jax.jit(
    step,
    in_shardings=(
      shardings,
      None if precomputed_reference else shardings.params,  # precomputed: no reference tree is passed
      pair_batch_shardings(mesh, precomputed_reference),
      sft_step.base_shardings(config, mesh),
    ),
    out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
    donate_argnames=("state",),
  )
