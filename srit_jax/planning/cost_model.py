"""A compiled program's cost, FLOPs and bytes per device, with every layer counted: XLA's cost
analysis counts a loop body once, so the layer scan's program is compiled again as two shallow
copies with their layers unrolled (`extrapolated_cost`), and the sampler's decode loop is
counted step by step from the model's shapes (`decode_step_cost`). The time bound of
srit_jax/planning/run_time.py is made of these; srit_jax/planning/programs.py builds the
programs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from srit_jax.model import decoder
from srit_jax.planning.compiled_figures import COST_ONLY_OPTIONS, Compiling, Cost


def per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded abstract arrays."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
    total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
  return total


def shallow(model_config, depth: int, unrolled: bool = True):
  """The model's first `depth` layers, all of them unrolled in one iteration of the layer scan
  (with `unrolled`, as the cost copies take them) or under the scan as the model has them."""
  unroll = depth if unrolled else model_config.scan_unroll
  return dataclasses.replace(
    model_config, num_layers=depth, scan_unroll=unroll, layer_types=model_config.layer_types[:depth]
  )


class _OutOfMemory(RuntimeError):
  """A cost copy XLA refused for lack of HBM."""


MAX_ROW_SHARE = 64  # the smallest share of the rows a refused cost copy is compiled at: 1/64


def extrapolated_cost(build, model_config, how: Compiling = Compiling(), what: str = "the program") -> Cost:
  """One call's cost with every layer counted. XLA's cost analysis counts a loop body once, so a
  program whose layers run under the scan counts one layer: the program is compiled again at
  depth 1 and 2 with its layers unrolled; the difference is a layer (its forward, backward and
  optimizer update alike), which the full depth has `num_layers` of. The output layer, which
  the run projects in chunks of positions, and the microbatches of gradient accumulation (loops
  too) take whole rows and one pass in those copies: the same work, counted whole. The copies
  are compiled with `COST_ONLY_OPTIONS`.

  Whole rows can need more HBM than the chip has where the program itself fits (the output
  layer's logits of every position at once: a 152k vocabulary over 32 rows of 1024 a chip is
  20 GB): then the copies are compiled at 1/2, 1/4, ... of the rows until they fit, and at half
  that share again, and the cost, a fixed part (the optimizer's update, the weights read) plus a
  part per row, is carried from those two shares to all the rows."""

  def cost_at(depth, share):
    lower, arguments = build(shallow(model_config, depth), whole_rows=True, share=share)
    label = f"{what}, {depth} unrolled layer{'s' if depth > 1 else ''}"
    label += f", 1/{share} of the rows (for its cost)" if share > 1 else " (for its cost)"
    figures = how.figures(lower, arguments, label, COST_ONLY_OPTIONS)
    if figures.error:
      raise (_OutOfMemory if figures.temporaries else RuntimeError)(figures.error)
    return figures.cost

  def every_layer(share):
    one, two = cost_at(1, share), cost_at(2, share)
    return one + (two - one) * (model_config.num_layers - 1)

  share = 1
  while True:
    try:
      cost = every_layer(share)
      break
    except _OutOfMemory:
      if share >= MAX_ROW_SHARE:
        raise
      share *= 2
  if share == 1:
    return cost
  # Linear in the share f of the rows: cost(1) = cost(1/s) + (cost(1/s) - cost(1/2s)) (2s - 2).
  return cost + (cost - every_layer(2 * share)) * (2 * share - 2)


def decode_step_cost(model_config, weights_tree, batch: int, cache_length: int, mesh) -> Cost:
  """One decode step of `batch` rows, per device: the weights (in their stored dtype) and the KV
  cache are each read once, 2 FLOPs per parameter per row and 4 per cached key per head per row.
  Analytic: the sampler's decode loop is a loop, which XLA counts once."""
  weights = per_device_bytes(weights_tree)  # parameters (and adapters) as stored
  devices = mesh.devices.size
  itemsize = jnp.dtype(model_config.dtype).itemsize
  kv = model_config.num_kv_heads * model_config.head_dim
  cache = 2 * model_config.num_layers * batch * cache_length * kv * itemsize / devices
  parameters = _parameter_count(model_config)
  attention_flops = 4 * model_config.num_layers * batch * cache_length * model_config.num_heads * model_config.head_dim
  return Cost((2 * parameters * batch + attention_flops) / devices, weights + cache)


def _parameter_count(model_config) -> int:
  shapes = nn.unbox(decoder.boxed_param_shapes(model_config))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))
