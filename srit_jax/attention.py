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
