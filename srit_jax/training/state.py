"""The training state shared by the SFT and DPO steps: what it holds, where it lies on the mesh,
and gradient accumulation over microbatches inside a step."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from srit_jax import sharding
from srit_jax.model import decoder
from srit_jax.model.config import ModelConfig


@flax.struct.dataclass
class TrainState:
  """The trained parameters and their optimizer state; a frozen tree (a reference, a LoRA base)
  is never part of it, so it is never donated and never gets optimizer moments."""

  step: jax.Array
  params: dict
  opt_state: optax.OptState


def create_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


def state_shardings(state: TrainState, config: ModelConfig, mesh: Mesh) -> TrainState:
  """Shardings of a state: parameters and their optimizer moments by logical axes."""
  param_shardings = sharding.tree_shardings(decoder.boxed_param_shapes(config), mesh)
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


def apply_gradients(state: TrainState, grads, optimizer: optax.GradientTransformation) -> TrainState:
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
