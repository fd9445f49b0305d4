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
  cached_k_BxKxSxH,
  cached_v_BxKxSxH,
  new_k_BxTxKxH,
  new_v_BxTxKxH,
  *,
  q_positions_BxT,
  q_segment_ids_BxT,
  cache_positions_BxS,
  cache_segment_ids_BxS,
  sliding_window: int | None = None,
) -> jnp.ndarray:
  """Attention of T new queries over a KV cache plus the T new keys, with one joint softmax.

  The decode path: the cache is read where it lies and the new keys are attended separately,
  so no step copies the cache to append to it. Cache slots holding the new tokens must still
  be empty (segment 0); the caller writes the new keys in afterwards.
  """
  batch, length, num_heads, head_dim = q_BxTxNxH.shape
  num_kv_heads = cached_k_BxKxSxH.shape[1]
  groups = num_heads // num_kv_heads
  q_BxKxGxTxH = q_BxTxNxH.reshape(batch, length, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  q_BxKxGxTxH = q_BxKxGxTxH * jnp.asarray(head_dim**-0.5, q_BxTxNxH.dtype)
  f32 = jnp.float32
  cache_scores = jnp.einsum("bkgth,bksh->bkgts", q_BxKxGxTxH, cached_k_BxKxSxH, preferred_element_type=f32)
  new_scores = jnp.einsum("bkgth,bukh->bkgtu", q_BxKxGxTxH, new_k_BxTxKxH, preferred_element_type=f32)
  cache_mask = attention_mask(
    q_positions_BxT, q_segment_ids_BxT, cache_positions_BxS, cache_segment_ids_BxS, sliding_window
  )
  new_mask = attention_mask(q_positions_BxT, q_segment_ids_BxT, q_positions_BxT, q_segment_ids_BxT, sliding_window)
  cache_scores = jnp.where(cache_mask[:, :, None], cache_scores, _MASKED)
  new_scores = jnp.where(new_mask[:, :, None], new_scores, _MASKED)
  top = jnp.maximum(cache_scores.max(-1, keepdims=True), new_scores.max(-1, keepdims=True))
  cache_weights, new_weights = jnp.exp(cache_scores - top), jnp.exp(new_scores - top)
  total = cache_weights.sum(-1, keepdims=True) + new_weights.sum(-1, keepdims=True)
  dtype = cached_v_BxKxSxH.dtype
  out = jnp.einsum("bkgts,bksh->bkgth", cache_weights.astype(dtype), cached_v_BxKxSxH, preferred_element_type=f32)
  out += jnp.einsum("bkgtu,bukh->bkgth", new_weights.astype(dtype), new_v_BxTxKxH, preferred_element_type=f32)
  out = out / total
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, num_heads, head_dim).astype(q_BxTxNxH.dtype)
