"""The training state and the pure SFT step, jitted once with explicit shardings.

`sft_step(state, batch) -> (state, metrics)`: cross-entropy on answer tokens, computed in
chunks; gradients accumulated over `num_microbatches` slices of the batch inside the step
(the loss is normalised by the whole batch's weight, so k microbatches equal one batch);
parameters kept in `param_dtype` (float32 master weights) while the forward runs in the
model's compute dtype.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from srit_jax import sharding
from srit_jax.model import decoder as model_lib
from srit_jax.model.config import ModelConfig
from srit_jax.training import losses

BATCH_FIELDS = ("tokens", "targets", "positions", "segment_ids", "loss_weights")


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState


def create_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def batch_nll_sum(params, micro, *, config: ModelConfig, mesh, chunk_size: int):
  """Weighted NLL sum of a (micro)batch; the loss divides it by the whole batch's weight."""
  model = model_lib.Transformer(config, mesh)
  hidden = model.apply(
    {"params": params}, micro["tokens"], micro["positions"], micro["segment_ids"], method="hidden_states"
  )
  log_probs = losses.chunked_token_log_probs(model, params, hidden, micro["targets"], chunk_size)
  return losses.weighted_nll_sum(log_probs, micro["loss_weights"])


def accumulated_value_and_grad(loss_and_grad, params, batch, num_microbatches: int):
  """((loss, aux), grads) of `loss_and_grad(params, micro) -> ((loss, aux), grads)` over the batch.

  With `num_microbatches` > 1 every array of `batch` is cut into that many slices along its
  first axis, which run one after another inside the step (a `lax.scan`): losses and
  gradients are summed, and aux values (per-row) are put back in row order. Each slice's
  loss must already be its share of the whole batch's loss.
  """
  if num_microbatches == 1:
    return loss_and_grad(params, batch)
  micro = jax.tree.map(lambda x: x.reshape(num_microbatches, -1, *x.shape[1:]), batch)

  def accumulate(carry, one):
    (loss, aux), grads = loss_and_grad(params, one)
    return jax.tree.map(jnp.add, carry, (loss, grads)), aux

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), aux = jax.lax.scan(accumulate, zeros, micro)
  aux = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), aux)
  return (loss, aux), grads


def sft_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  config: ModelConfig,
  optimizer: optax.GradientTransformation,
  num_microbatches: int = 1,
  chunk_size: int = 128,
  mesh: Mesh | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  total_weight = jnp.maximum(jnp.sum(batch["loss_weights"]), 1e-6)

  def nll_sum_and_nothing(params, micro):
    return batch_nll_sum(params, micro, config=config, mesh=mesh, chunk_size=chunk_size), ()

  loss_and_grad = jax.value_and_grad(nll_sum_and_nothing, has_aux=True)
  (nll_sum, _), grads = accumulated_value_and_grad(loss_and_grad, state.params, batch, num_microbatches)
  loss = nll_sum / total_weight
  grads = jax.tree.map(lambda g: (g / total_weight).astype(g.dtype), grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {
    "loss": loss,
    "grad_norm": optax.tree.norm(grads),
    "loss_tokens": jnp.sum(batch["loss_weights"] > 0),
    "tokens": jnp.sum(batch["segment_ids"] > 0),
  }
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def state_shardings(state: TrainState, config: ModelConfig, mesh: Mesh):
  """Shardings of a state: parameters and their optimizer moments by logical axes."""
  param_shardings = sharding.tree_shardings(model_lib.boxed_param_shapes(config), mesh)
  replicated = NamedSharding(mesh, PartitionSpec())

  def like_params(subtree):
    # optax states hold trees shaped like the parameters (moments) next to scalars (counts).
    if jax.tree.structure(subtree) == jax.tree.structure(state.params):
      return param_shardings
    return jax.tree.map(lambda _: replicated, subtree)

  opt_shardings = jax.tree.map(
    like_params, state.opt_state, is_leaf=lambda x: jax.tree.structure(x) == jax.tree.structure(state.params)
  )
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)


def batch_shardings(mesh: Mesh) -> dict[str, NamedSharding]:
  spec = PartitionSpec(("data", "fsdp"), None)
  return {name: NamedSharding(mesh, spec) for name in BATCH_FIELDS}


def shard_batch(local_batch: dict, mesh: Mesh) -> dict[str, jax.Array]:
  """Global batch arrays from this process's rows (all rows on a single-process run)."""
  shardings = batch_shardings(mesh)
  return {name: jax.make_array_from_process_local_data(shardings[name], local_batch[name]) for name in BATCH_FIELDS}


def jit_sft_step(
  state: TrainState,
  config: ModelConfig,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
  *,
  num_microbatches: int = 1,
  chunk_size: int = 128,
):
  """`sft_step` jitted with explicit in/out shardings and a donated state."""
  shardings = state_shardings(state, config, mesh)
  step = functools.partial(
    sft_step, config=config, optimizer=optimizer, num_microbatches=num_microbatches, chunk_size=chunk_size, mesh=mesh
  )
  metric_sharding = NamedSharding(mesh, PartitionSpec())
  return jax.jit(
    step,
    in_shardings=(shardings, batch_shardings(mesh)),
    out_shardings=(shardings, metric_sharding),
    donate_argnames=("state",),
  )
