"""The one attention function of the model, built on `jax.nn.dot_product_attention`.

Masking is described by positions and segment ids rather than a ready-made mask, so that a
kernel that takes segment ids directly (TPU splash attention) can slot in behind this call.

Shapes: B batch, T query length, S key length, N query heads, K key/value heads, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(
  q_positions_BxT, q_segment_ids_BxT, kv_positions_BxS, kv_segment_ids_BxS, sliding_window: int | None = None
) -> jnp.ndarray:
  """[B, 1, T, S] boolean: same non-empty segment, causal by position, inside the window."""
  same_segment = q_segment_ids_BxT[:, :, None] == kv_segment_ids_BxS[:, None, :]
  occupied = kv_segment_ids_BxS[:, None, :] != 0
  distance_BxTxS = q_positions_BxT[:, :, None] - kv_positions_BxS[:, None, :]
  mask = same_segment & occupied & (distance_BxTxS >= 0)
  if sliding_window is not None:
    mask &= distance_BxTxS < sliding_window
  return mask[:, None, :, :]


def _implementation(dtype) -> str:
  # cuDNN's fused kernel takes half precision only; XLA everywhere else.
  if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
    return "cudnn"
  return "xla"


def attend(
  q_BxTxNxH,
  k_BxSxKxH,
  v_BxSxKxH,
  *,
  q_positions_BxT,
  q_segment_ids_BxT,
  kv_positions_BxS,
  kv_segment_ids_BxS,
  sliding_window: int | None = None,
) -> jnp.ndarray:
  """Grouped-query attention; returns [B, T, N, H] in the dtype of the queries."""
  mask = attention_mask(q_positions_BxT, q_segment_ids_BxT, kv_positions_BxS, kv_segment_ids_BxS, sliding_window)
  return jax.nn.dot_product_attention(
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask, implementation=_implementation(q_BxTxNxH.dtype)
  )


_MASKED = -1e30


def attend_cached(
  q_BxTxNxH,
  keys_BxKxHxS,
  values_BxKxSxH,
  *,
  q_positions_BxT,
  q_segment_ids_BxT,
  cache_positions_BxS,
  cache_segment_ids_BxS,
  sliding_window: int | None = None,
) -> jnp.ndarray:
  """Attention of T new queries over a KV cache that already holds their own keys and values.

  The decode path. Keys lie as [B, K, H, S] and values as [B, K, S, H], so both matmuls read
  the cache where it lies; each query head group is handled against its key/value head
  without repeating the cache. Returns [B, T, N, H] in the dtype of the queries.
  """
  batch, length, num_heads, head_dim = q_BxTxNxH.shape
  num_kv_heads = keys_BxKxHxS.shape[1]
  groups = num_heads // num_kv_heads
  q_BxKxGxTxH = q_BxTxNxH.reshape(batch, length, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  q_BxKxGxTxH = q_BxKxGxTxH * jnp.asarray(head_dim**-0.5, q_BxTxNxH.dtype)
  f32 = jnp.float32
  scores = jnp.einsum("bkgth,bkhs->bkgts", q_BxKxGxTxH, keys_BxKxHxS, preferred_element_type=f32)
  mask = attention_mask(q_positions_BxT, q_segment_ids_BxT, cache_positions_BxS, cache_segment_ids_BxS, sliding_window)
  weights = jax.nn.softmax(jnp.where(mask[:, :, None], scores, _MASKED), axis=-1)
  out = jnp.einsum(
    "bkgts,bksh->bkgth", weights.astype(values_BxKxSxH.dtype), values_BxKxSxH, preferred_element_type=f32
  )
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, num_heads, head_dim).astype(q_BxTxNxH.dtype)
