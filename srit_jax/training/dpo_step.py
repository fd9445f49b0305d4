"""Direct Preference Optimization: the losses and the pure `dpo_step` against a frozen reference.

The losses take summed log-probabilities of whole answers (policy and reference, chosen and
rejected) and apply beta in one place. A batch is rows in any of the layouts of
`srit_jax/data/pair_batches.py` (one row per side, packed sides, shared prompts): one forward
over the rows gives every position's log-prob, summed per answer by the answer slot each
position carries. The reference is its own argument — never donated, never given optimizer
state — run in the same jit under `stop_gradient`, unless the batch carries reference
log-probabilities precomputed in one pass over fixed pairs.

An optional NLL term on the chosen answers, length-normalised per pair as in Iterative
Reasoning Preference Optimization (Pang et al., 2024), joins the preference loss with
`nll_weight`; the loss type "nll" keeps that term alone (fine-tuning on the chosen answers:
the compute-matched control of a preference recipe), which reads neither the rejected answers
nor the reference: its batches hold the chosen answers alone and no reference runs.

Shapes: B pairs, R rows, L row length.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from srit_jax import sharding
from srit_jax.data import pair_batches
from srit_jax.model import attention
from srit_jax.model.config import ModelConfig
from srit_jax.training import losses, sft_step
from srit_jax.training.state import (
  TrainState,
  accumulated_value_and_grad,
  apply_gradients,
  param_shardings,
  state_shardings,
)

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "dpop", "simpo", "orpo", "nll")
REFERENCE_FREE_PREFERENCE = ("simpo", "orpo")  # preference losses whose rewards need no reference
REFERENCE_FREE = (*REFERENCE_FREE_PREFERENCE, "nll")  # losses that read no reference
SMOOTHED = ("sigmoid", "simpo")  # losses with label smoothing
PAIR_PACKINGS = ("auto", *pair_batches.PACKINGS)
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
  chosen_lengths_B=None,
  rejected_lengths_B=None,
  simpo_gamma: float = 0.5,
  dpop_lambda: float = 50.0,
):
  """(per-pair loss [B], chosen reward [B], rejected reward [B]).

  sigmoid: -(1 - ε) log σ(β h) - ε log σ(-β h) (ε = label smoothing: robust/cDPO);
  ipo: (h - 1 / (2β))²; hinge: max(0, 1 - β h); where h is the policy's log-ratio margin
  minus the reference's; dpop (DPO-Positive, Pal et al., 2024): -log σ(β (h - λ max(0, -r_w)))
  with r_w the chosen answer's log-ratio and λ = `dpop_lambda`: a chosen answer less likely than
  under the reference is penalised, which plain DPO allows while the rejected one falls faster.
  The rewards are β times each side's log-ratio.

  Reference-free, on each side's mean log-prob per answer token a = log p / length
  (`chosen_lengths_B`, `rejected_lengths_B`), the rewards β a:
  simpo (Meng et al., 2024): -(1 - ε) log σ(β Δa - γ) - ε log σ(-(β Δa - γ)), γ = `simpo_gamma`;
  orpo (Hong et al., 2024): -β log σ(log odds(chosen) - log odds(rejected)), odds = e^a / (1 - e^a),
  β weighing the odds-ratio term (ORPO's λ) beside the NLL term (`nll_weight`, 1 in ORPO).
  nll: the chosen answer's negative log-likelihood over its length, no preference term.
  """
  f32 = jnp.float32
  if loss_type in REFERENCE_FREE_PREFERENCE:
    chosen_mean_B = policy_chosen_logps_B.astype(f32) / jnp.maximum(chosen_lengths_B.astype(f32), 1.0)
    rejected_mean_B = policy_rejected_logps_B.astype(f32) / jnp.maximum(rejected_lengths_B.astype(f32), 1.0)
    if loss_type == "simpo":
      logits_B = beta * (chosen_mean_B - rejected_mean_B) - simpo_gamma
      per_pair = -(1 - label_smoothing) * jax.nn.log_sigmoid(logits_B) - label_smoothing * jax.nn.log_sigmoid(-logits_B)
    else:
      log_odds_B = (chosen_mean_B - rejected_mean_B) - (_log1mexp(chosen_mean_B) - _log1mexp(rejected_mean_B))
      per_pair = -beta * jax.nn.log_sigmoid(log_odds_B)
    return per_pair, beta * chosen_mean_B, beta * rejected_mean_B
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
  elif loss_type == "dpop":
    per_pair = -jax.nn.log_sigmoid(beta * (margin_B - dpop_lambda * jax.nn.relu(-chosen_ratio_B)))
  elif loss_type == "nll":
    per_pair = length_normalized_nll(policy_chosen_logps_B, chosen_lengths_B)
  else:
    raise ValueError(f"loss_type {loss_type!r} is not one of {LOSS_TYPES}")
  return per_pair, beta * chosen_ratio_B, beta * rejected_ratio_B


def _log1mexp(x):
  """log(1 - e^x) for x < 0, stable on both sides of -log 2; a mean log-prob of 0 (an answer
  the model is sure of) is kept just below it."""
  x = jnp.minimum(x, -1e-6)
  return jnp.where(x > -math.log(2), jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def uses_reference(loss_type: str) -> bool:
  """Whether a loss reads the reference's log-probs (DPO, IPO, hinge and DPOP do; SimPO, ORPO and the NLL do not)."""
  return loss_type not in REFERENCE_FREE


def reads_rejected(loss_type: str) -> bool:
  """Whether a loss reads the rejected answers (the NLL alone does not)."""
  return loss_type != "nll"


def length_normalized_nll(chosen_logps_B, chosen_lengths_B):
  """-log p(chosen answer) / its number of tokens, per pair [B]."""
  return -chosen_logps_B.astype(jnp.float32) / jnp.maximum(chosen_lengths_B.astype(jnp.float32), 1.0)


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


def pair_log_probs(
  config: ModelConfig, params, batch: dict, *, mesh=None, chunk_size: int = 128, base=None, dropout_rng=None
):
  """(chosen, rejected) summed answer-token log-probabilities per pair [B] of a batch of rows.

  `params`: all parameters, or LoRA adapters over `base` (under LoRA the reference is its
  adapters over the one shared base). Also the one-pass precomputation of the reference's.
  """
  rows = batch["rows"]
  at = rows.get(pair_batches.ANSWER_FIELD)  # [R, K]: the output layer at answer positions only
  token_log_probs = losses.token_log_probs(
    config, params, rows, mesh=mesh, chunk_size=chunk_size, base=base, dropout_rng=dropout_rng, at=at
  )
  num_pairs = batch["chosen_lengths"].shape[0]
  weights, slots = rows["loss_weights"], rows["answer_slots"]
  if at is not None:  # the padding past a row's end weighs nothing
    weights, slots = losses.gather_positions(weights, at, fill_value=0), losses.gather_positions(slots, at)
  weighted = (token_log_probs * weights.astype(jnp.float32)).reshape(-1)
  # Slot 2p: the chosen answer of pair p, 2p + 1: its rejected answer, 2B: no answer.
  sums = jax.ops.segment_sum(weighted, slots.reshape(-1), num_segments=2 * num_pairs + 1)
  return sums[0 : 2 * num_pairs : 2], sums[1 : 2 * num_pairs : 2]


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
  simpo_gamma: float = 0.5,
  dpop_lambda: float = 50.0,
  nll_weight: float = 0.0,
  num_microbatches: int = 1,
  chunk_size: int = 128,
  mesh: Mesh | None = None,
):
  """One DPO update. `batch`: pair rows (`srit_jax/data/pair_batches.py`), with the pairs' answer
  lengths (+ precomputed reference log-probs).

  In full fine-tuning `ref_params` is the frozen reference model; under LoRA it is the frozen
  reference adapters (the SFT student's), over the same frozen `base` as the policy's.

  With `num_microbatches` > 1 the pairs go through the policy (and the reference) in that many
  slices inside the step and their gradients are summed: the same update as one pass, with a
  fraction of the activation memory.
  """
  num_pairs = batch["chosen_lengths"].shape[0]
  reads_reference = uses_reference(loss_type)
  precomputed = all(k in batch for k in REFERENCE_FIELDS)
  if reads_reference and not precomputed:
    ref_params = jax.lax.stop_gradient(ref_params)  # the frozen reference: no gradient flows into it
  rng = sft_step.dropout_rng(config, state.step)

  def loss_fn(params, micro):
    """This slice's share of the batch loss: its pairs' losses over the whole batch's count."""
    if not reads_reference:
      ref_chosen = ref_rejected = jnp.zeros_like(micro["chosen_lengths"])
    elif precomputed:
      ref_chosen, ref_rejected = micro["ref_chosen_logps"], micro["ref_rejected_logps"]
    else:
      ref_chosen, ref_rejected = pair_log_probs(config, ref_params, micro, mesh=mesh, chunk_size=chunk_size, base=base)
    chosen, rejected = pair_log_probs(
      config, params, micro, mesh=mesh, chunk_size=chunk_size, base=base, dropout_rng=rng
    )
    per_pair, chosen_rewards, rejected_rewards = dpo_loss(
      chosen,
      rejected,
      ref_chosen,
      ref_rejected,
      beta=beta,
      loss_type=loss_type,
      label_smoothing=label_smoothing,
      chosen_lengths_B=micro["chosen_lengths"],
      rejected_lengths_B=micro["rejected_lengths"],
      simpo_gamma=simpo_gamma,
      dpop_lambda=dpop_lambda,
    )
    loss = jnp.sum(per_pair) / num_pairs
    if nll_weight:
      loss += nll_weight * jnp.sum(length_normalized_nll(chosen, micro["chosen_lengths"])) / num_pairs
    return loss, (per_pair, chosen, rejected, chosen_rewards, rejected_rewards)

  loss_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, per_pair_values), grads = accumulated_value_and_grad(
    loss_and_grad, state.params, batch, num_microbatches, param_shardings(config, mesh)
  )
  per_pair, chosen, rejected, chosen_rewards, rejected_rewards = per_pair_values
  metrics = {
    "loss": loss,  # with the NLL term, when there is one
    "grad_norm": optax.tree.norm(grads),
    "logps/chosen": jnp.mean(chosen),
    "nll/chosen": jnp.mean(length_normalized_nll(chosen, batch["chosen_lengths"])),
    "tokens": jnp.sum(batch["rows"]["segment_ids"] > 0),
    "rows": jnp.float32(batch["rows"]["segment_ids"].shape[0]),  # a batch may hold fewer than the run's most
  }
  if reads_rejected(loss_type):  # rewards and rejected answers: none without them
    metrics = (
      pair_metrics(per_pair, chosen_rewards, rejected_rewards) | metrics | {"logps/rejected": jnp.mean(rejected)}
    )
  return apply_gradients(state, grads, optimizer), metrics


def pair_layout(block, model_config: ModelConfig, mesh: Mesh | None) -> pair_batches.PairLayout:
  """The rows a refine block's pairs are laid out in: its `pair_packing` ("auto": shared prompts,
  or packed sides where the attention kernel cannot branch — splash on TPU) in rows of its
  `pack_length` (0: twice max_length for shared prompts, so that every pair fits one row;
  max_length otherwise); the chosen answers alone for a loss that reads no rejected answer."""
  packing, max_length = block.pair_packing, block.max_length
  if packing not in PAIR_PACKINGS:
    raise ValueError(f"pair_packing {packing!r} is not one of {PAIR_PACKINGS}")
  if packing == "auto":
    kernel = attention.kernel_for(model_config, attention.platform_of(mesh), block.pack_length or 2 * max_length)
    packing = "sides" if kernel in attention.CANNOT_BRANCH else "shared_prompt"
  default = 2 * max_length if packing == "shared_prompt" else max_length
  row_length = max_length if packing == "none" else block.pack_length or default
  if row_length < max_length:
    raise ValueError(f"pack_length {row_length} is shorter than max_length {max_length}: a side would not fit")
  return pair_batches.PairLayout(packing, row_length, chosen_only=not reads_rejected(block.loss_type))


def pair_batch_shardings(
  mesh: Mesh, precomputed_reference: bool, branched: bool = False, answer_positions: bool = False
) -> dict:
  """Shardings of a pair batch: rows and per-pair values split over the data and fsdp axes.
  `branched`: the rows hold shared-prompt pairs (branch ids); `answer_positions`: they list
  their answer positions."""
  row_fields = pair_batches.ROW_FIELDS + ((pair_batches.BRANCH_FIELD,) if branched else ())
  row_fields += (pair_batches.ANSWER_FIELD,) if answer_positions else ()
  shardings = {"rows": dict.fromkeys(row_fields, sharding.row_sharding(mesh, 2))}
  per_pair = pair_batches.LENGTH_FIELDS + (REFERENCE_FIELDS if precomputed_reference else ())
  return shardings | dict.fromkeys(per_pair, sharding.row_sharding(mesh, 1))


def jit_dpo_step(
  state,
  config: ModelConfig,
  optimizer,
  mesh: Mesh,
  *,
  precomputed_reference: bool,
  branched: bool = False,
  answer_positions: bool = False,
  **loss_options,
):
  """`dpo_step(state, reference, batch, base)` jitted with explicit shardings: the state donated; the
  reference (sharded like the trained tree) and the LoRA base never donated. `branched`: batches
  of shared-prompt pairs; `answer_positions`: batches that list their rows' answer positions."""
  shardings = state_shardings(state, config, mesh)
  reference_tree = not precomputed_reference and uses_reference(loss_options.get("loss_type", "sigmoid"))
  step = functools.partial(dpo_step, config=config, optimizer=optimizer, mesh=mesh, **loss_options)
  return jax.jit(
    step,
    in_shardings=(
      shardings,
      shardings.params if reference_tree else None,  # precomputed or unread: no reference tree is passed
      pair_batch_shardings(mesh, precomputed_reference, branched, answer_positions),
      sft_step.base_shardings(config, mesh),
    ),
    out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
    donate_argnames=("state",),
  )
