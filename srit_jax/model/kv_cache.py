"""The KV cache of generation: every layer's keys and values in preallocated slots, what each
slot holds (position, segment), and the writes into it — a prefill's tokens, a step's, a
prefix all rows share, copies of rows.

Shapes: B batch, T new tokens, S cache slots, K key/value heads, H head dim, L layers.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from srit_jax import sharding
from srit_jax.model.config import ModelConfig


@flax.struct.dataclass
class KVCache:
  """Preallocated keys and values of every layer, and what each slot holds.

  keys: one [B, K, H, S] array per layer, values one [B, K, S, H] array per layer: laid out
  so that each step's two attention matmuls read them as they lie, and kept as separate
  arrays rather than one stacked [L, ...] array, so no step copies a layer's slice out of a
  stack. positions, segment_ids: [B, S]
  (segment 0 = empty slot); end: the number of slots written so far, an int32 scalar when
  every row has as many, or one per row [B] when rows start at different times (a batch
  whose finished rows take new prompts).
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  positions: jax.Array
  segment_ids: jax.Array
  end: jax.Array


KEY_CACHE_AXES = ("batch", "act_kv_heads", "head_dim", "length")  # each layer's keys
VALUE_CACHE_AXES = ("batch", "act_kv_heads", "length", "head_dim")  # each layer's values


@flax.struct.dataclass
class CacheView:
  """What every layer sees of the cache: slot contents and how to attend.

  mode "prefill": attend among the new tokens only (the cache must be empty) and hand back
  their keys and values; mode "step": write the new keys and values into the layer's cache
  at slots [end, end + T), attend over the whole cache, and hand back the layer's cache.
  """

  positions: jax.Array  # [B, S], this call's tokens included (mode "step")
  segment_ids: jax.Array  # [B, S], likewise
  end: jax.Array  # int32 scalar or [B]: the first slot this call writes
  mode: str = flax.struct.field(pytree_node=False, default="step")


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype=None, mesh=None) -> KVCache:
  """An empty cache; on a mesh, each layer's keys and values laid out by their logical axes."""
  dtype = dtype or config.dtype
  key_shape = (batch_size, config.num_kv_heads, config.head_dim, max_length)
  value_shape = (batch_size, config.num_kv_heads, max_length, config.head_dim)
  return KVCache(
    keys=tuple(sharding.constrain(jnp.zeros(key_shape, dtype), KEY_CACHE_AXES, mesh) for _ in range(config.num_layers)),
    values=tuple(
      sharding.constrain(jnp.zeros(value_shape, dtype), VALUE_CACHE_AXES, mesh) for _ in range(config.num_layers)
    ),
    positions=jnp.zeros((batch_size, max_length), jnp.int32),
    segment_ids=jnp.zeros((batch_size, max_length), jnp.int32),
    end=jnp.zeros((), jnp.int32),
  )


def with_prefix(cache: KVCache, prefix: KVCache, mesh=None) -> KVCache:
  """`cache` (empty) with every row's first slots holding `prefix`, the cache of one row ([1, ...]):
  a prompt prefix all rows share, computed once. The rows' own tokens are written after it."""
  batch = cache.positions.shape[0]

  def put(old, new, axes=None):
    new = jnp.broadcast_to(new, (batch, *new.shape[1:])).astype(old.dtype)
    written = jax.lax.dynamic_update_slice(old, new, (0,) * old.ndim)
    return sharding.constrain(written, axes, mesh) if axes else written

  return KVCache(
    keys=tuple(put(old, new, KEY_CACHE_AXES) for old, new in zip(cache.keys, prefix.keys)),
    values=tuple(put(old, new, VALUE_CACHE_AXES) for old, new in zip(cache.values, prefix.values)),
    positions=put(cache.positions, prefix.positions),
    segment_ids=put(cache.segment_ids, prefix.segment_ids),
    end=jnp.asarray(prefix.positions.shape[1], jnp.int32),
  )


def take_rows(cache: KVCache, rows_B, mesh=None) -> KVCache:
  """`cache` with row b a copy of its row `rows_B[b]`: rows whose prompts are alike (a prompt's
  samples) prefill it once and take copies."""
  take = lambda x, axes: sharding.constrain(x[rows_B], axes, mesh)
  return KVCache(
    keys=tuple(take(k, KEY_CACHE_AXES) for k in cache.keys),
    values=tuple(take(v, VALUE_CACHE_AXES) for v in cache.values),
    positions=take(cache.positions, ("batch", None)),
    segment_ids=take(cache.segment_ids, ("batch", None)),
    end=cache.end if jnp.ndim(cache.end) == 0 else cache.end[rows_B],
  )


def _write_at(cache_array, new, end, slot_axis: int):
  """`new` written into `cache_array` from slot `end` along `slot_axis`.

  `end` is one slot for every row (one `dynamic_update_slice`) or one per row ([B]: the same
  update per row, which XLA turns into one scatter).
  """
  if jnp.ndim(end) == 0:
    return jax.lax.dynamic_update_slice(cache_array, new, tuple(end if a == slot_axis else 0 for a in range(new.ndim)))

  def row(array, update, row_end):
    return jax.lax.dynamic_update_slice(
      array, update, tuple(row_end if a == slot_axis - 1 else 0 for a in range(update.ndim))
    )

  return jax.vmap(row)(cache_array, new, end)


def write_slots(cache: KVCache, positions_BxT, segment_ids_BxT):
  """The cache's slot positions and segment ids with T new tokens written at [end, end + T)."""
  positions = _write_at(cache.positions, positions_BxT.astype(jnp.int32), cache.end, 1)
  segment_ids = _write_at(cache.segment_ids, segment_ids_BxT.astype(jnp.int32), cache.end, 1)
  return positions, segment_ids


def write_keys(keys_BxKxHxS, new_BxTxKxH, end, mesh=None):
  """A layer's key cache with T new keys written at slots [end, end + T)."""
  new = new_BxTxKxH.transpose(0, 2, 3, 1).astype(keys_BxKxHxS.dtype)
  return sharding.constrain(_write_at(keys_BxKxHxS, new, end, 3), KEY_CACHE_AXES, mesh)


def write_values(values_BxKxSxH, new_BxTxKxH, end, mesh=None):
  """A layer's value cache with T new values written at slots [end, end + T)."""
  new = new_BxTxKxH.transpose(0, 2, 1, 3).astype(values_BxKxSxH.dtype)
  return sharding.constrain(_write_at(values_BxKxSxH, new, end, 2), VALUE_CACHE_AXES, mesh)


def write_prefill(cache: KVCache, new_kv, positions_BxT, segment_ids_BxT, mesh=None) -> KVCache:
  """The cache after a prefill: every layer's keys and values ([L, B, T, K, H] from the layer
  scan) and their slot metadata written at slots [end, end + T)."""
  new_keys, new_values = new_kv
  positions, segment_ids = write_slots(cache, positions_BxT, segment_ids_BxT)
  return KVCache(
    keys=tuple(write_keys(old, new, cache.end, mesh) for old, new in zip(cache.keys, new_keys)),
    values=tuple(write_values(old, new, cache.end, mesh) for old, new in zip(cache.values, new_values)),
    positions=positions,
    segment_ids=segment_ids,
    end=cache.end + positions_BxT.shape[1],
  )
