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
  """A fresh state over `params`. Its scalars (the step, optax's counts) lie on the parameters'
  mesh, replicated, as a jitted step returns them: else the step's second call sees other input
  shardings than its first and compiles again."""
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))
  leaves = jax.tree.leaves(params)
  if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):  # traced (eval_shape): no placement
    return state
  meshes = {leaf.sharding.mesh for leaf in leaves if isinstance(leaf.sharding, NamedSharding)}
  if len(meshes) != 1:
    return state
  replicated = NamedSharding(meshes.pop(), PartitionSpec())
  return jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated), state)


def trainable_boxed_shapes(config: ModelConfig):
  """The trained tree's logical shapes: the LoRA adapters when there are any, else the parameters."""
  return decoder.boxed_adapter_shapes(config) if config.lora_rank else decoder.boxed_param_shapes(config)


def state_shardings(state: TrainState, config: ModelConfig, mesh: Mesh) -> TrainState:
  """Shardings of a state: the trained tree and its optimizer moments by logical axes."""
  param_shardings = sharding.tree_shardings(trainable_boxed_shapes(config), mesh)
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


def param_shardings(config: ModelConfig, mesh: Mesh | None):
  """The trained tree's shardings by their logical axes (None without a mesh)."""
  return None if mesh is None else sharding.tree_shardings(trainable_boxed_shapes(config), mesh)


def accumulated_value_and_grad(loss_and_grad, params, batch, num_microbatches: int, grad_shardings=None):
  """((loss, aux), grads) of `loss_and_grad(params, micro) -> ((loss, aux), grads)` over the batch.

  With `num_microbatches` = k > 1 the rows of `batch` are dealt into k slices (slice m takes
  rows m, m + k, m + 2k, ...: a slice of a batch split over devices is split over all of
  them alike, so no slice moves between devices), which run one after another inside the
  step (a `lax.scan`): losses and gradients are summed, and aux values (per-row) are put
  back in row order. Each slice's loss must already be its share of the whole batch's loss.
  `grad_shardings` (the parameters' shardings) keep the running sum sharded like them.
  """
  if num_microbatches == 1:
    return loss_and_grad(params, batch)
  constrain = (
    (lambda tree: jax.lax.with_sharding_constraint(tree, grad_shardings))
    if grad_shardings is not None
    else (lambda x: x)
  )
  micro = jax.tree.map(lambda x: x.reshape(-1, num_microbatches, *x.shape[1:]).swapaxes(0, 1), batch)

  def accumulate(carry, one):
    # The barrier ties the parameters to this slice's data, so XLA cannot hoist their
    # all-gathers out of the loop (which would hold every layer gathered at once).
    params_now, one = jax.lax.optimization_barrier((params, one))
    (loss, aux), grads = loss_and_grad(params_now, one)
    total_loss, total_grads = carry
    return (total_loss + loss, constrain(jax.tree.map(jnp.add, total_grads, constrain(grads)))), aux

  zeros = (jnp.zeros((), jnp.float32), constrain(jax.tree.map(jnp.zeros_like, params)))
  (loss, grads), aux = jax.lax.scan(accumulate, zeros, micro)
  aux = jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), aux)
  return (loss, aux), grads


def apply_gradients(state: TrainState, grads, optimizer: optax.GradientTransformation) -> TrainState:
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
