"""The decoder run against a KV cache, for generation: prompts prefilled into the cache
(`prefill`, under the layer scan), then new tokens decoded one step or chunk at a time
(`decode`, the layers one after another on their own parameters). The network is
srit_jax/model/decoder.py's; the cache, srit_jax/model/kv_cache.py.

Shapes: B batch, T length, S cache length, D embed, V vocab, C row chunks, R rows a chunk,
L layers, K key/value heads, H head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from srit_jax.model import kv_cache
from srit_jax.model.config import ModelConfig
from srit_jax.model.decoder import DecoderBlock, Transformer, variables


def unstack_layers(tree) -> tuple:
  """The scanned layers of a parameter or adapter tree as one tree per layer, for `decode`.

  Costs one copy of the layer parameters; made once per generation call, it spares every
  decode step from copying each layer's slice out of the stacked arrays.
  """
  num_layers = jax.tree.leaves(tree["layers"])[0].shape[0]
  return tuple(jax.tree.map(lambda p, i=i: p[i], tree["layers"]) for i in range(num_layers))


def prefill(
  config: ModelConfig,
  params,
  tokens_BxT,
  positions_BxT,
  segment_ids_BxT,
  cache: kv_cache.KVCache,
  mesh=None,
  rows_per_chunk: int | None = None,
  adapters=None,
):
  """Runs prompts into an empty cache; returns (logits of each row's last position [B, V], cache).

  With `rows_per_chunk`, the rows go through the network that many at a time (a `lax.map`
  over row chunks): on CPU a few rows' activations stay in the processor's cache, which runs
  a large batch's prefill faster than one pass over all rows does. The batch must divide.
  """
  model = Transformer(config, mesh)
  batch = tokens_BxT.shape[0]
  inputs = (tokens_BxT, positions_BxT, segment_ids_BxT)

  def run(chunk):
    return model.apply(variables(params, adapters), *chunk, method=Transformer.prefill_kv)

  if (rows_per_chunk or batch) == batch:
    last_logits_BxV, new_kv = run(inputs)
  else:
    logits_CxRxV, kv_CxLxRxTxKxH = map_row_chunks(run, inputs, rows_per_chunk)
    last_logits_BxV = merge_row_chunks(logits_CxRxV)
    new_kv = tuple(merge_row_chunks(kv, row_axis=1) for kv in kv_CxLxRxTxKxH)  # [L, B, T, K, H]
  return last_logits_BxV, kv_cache.write_prefill(cache, new_kv, positions_BxT, segment_ids_BxT, mesh)


def map_row_chunks(run, inputs: tuple, rows: int):
  """`run` over `inputs` (arrays with their rows first) `rows` rows at a time, as a `lax.map`
  over row chunks: on CPU a few rows' activations stay in the processor's cache, which runs a
  large batch faster than one pass over all rows does. The outputs come back with the chunks
  first ([C, ...]); `merge_row_chunks` joins an output's rows. `rows` must divide the batch."""
  batch = inputs[0].shape[0]
  if batch % rows:
    raise ValueError(f"rows_per_chunk={rows} does not divide the batch of {batch}")
  return jax.lax.map(run, tuple(x.reshape(batch // rows, rows, *x.shape[1:]) for x in inputs))


def merge_row_chunks(x_C, row_axis: int = 0):
  """A `map_row_chunks` output, [C, ...] with each chunk's R rows at `row_axis`, as one array
  with the C·R rows at `row_axis`, in order."""
  x = jnp.moveaxis(x_C, 0, row_axis)
  return x.reshape(*x.shape[:row_axis], -1, *x.shape[row_axis + 2 :])


def decode(
  config: ModelConfig,
  params,
  layer_params,
  tokens_BxT,
  positions_BxT,
  segment_ids_BxT,
  cache: kv_cache.KVCache,
  mesh=None,
  layer_adapters=None,
  last_only: bool = False,
):
  """Runs T new tokens against the cache (a step or a chunk); returns (logits [B, T, V], cache),
  or with `last_only` the logits of the last position alone ([B, 1, V]: a chunk of prompt).

  The layers run one after another on their own parameters (`unstack_layers(params)`, and
  `unstack_layers(adapters)` with LoRA) and cache arrays rather than under the layer scan: a
  decode step does little arithmetic per byte, and slicing a layer out of a stack would copy
  its weights and cache every step.
  """
  model = Transformer(config, mesh)
  positions_BxS, segment_ids_BxS = kv_cache.write_slots(cache, positions_BxT, segment_ids_BxT)
  view = kv_cache.CacheView(positions_BxS, segment_ids_BxS, cache.end, mode="step")
  x_BxTxD = model.apply({"params": params}, tokens_BxT, method=Transformer.embed)
  keys, values = [], []
  for layer, layer_kv in enumerate(zip(cache.keys, cache.values)):
    layer_variables = variables(layer_params[layer], layer_adapters[layer] if layer_adapters else None)
    if mesh is not None:
      # Each layer's weights wait for the layer before it: on a mesh their gathers then happen one
      # layer at a time, instead of all of them at once ahead of the first layer.
      x_BxTxD, layer_variables = jax.lax.optimization_barrier((x_BxTxD, layer_variables))
    x_BxTxD, (layer_keys, layer_values) = _decode_layer(
      config, mesh, config.is_sliding(layer), layer_variables, x_BxTxD, positions_BxT, segment_ids_BxT, layer_kv, view
    )
    keys.append(layer_keys)
    values.append(layer_values)
  if last_only:
    x_BxTxD = x_BxTxD[:, -1:]
  logits = model.apply({"params": params}, x_BxTxD, method=Transformer.head)
  cache = kv_cache.KVCache(tuple(keys), tuple(values), positions_BxS, segment_ids_BxS, cache.end + tokens_BxT.shape[1])
  return logits, cache


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _decode_layer(
  config: ModelConfig, mesh, is_sliding: bool, layer_variables, x_BxTxD, positions_BxT, segment_ids_BxT, layer_kv, view
):
  """One layer of `decode` as a program of its own: traced and lowered once for all the layers
  that share its shapes and sliding flag, not once per layer (SmolLM2's sampler, 30 layers:
  traced in 0.8-1.1 s instead of 1.7-3.0 s and compiled in 9-10 s instead of 12-13 s, with the
  same tokens)."""
  return DecoderBlock(config, mesh).apply(
    layer_variables, x_BxTxD, positions_BxT, segment_ids_BxT, None, layer_kv, view, is_sliding
  )
