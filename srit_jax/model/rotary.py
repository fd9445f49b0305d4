"""Rotary position embeddings in the Hugging Face (rotate-half) layout, with Llama-3 scaling.

Shapes: B batch, T length, N heads, H head dim.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from srit_jax.model.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> np.ndarray:
  """The H/2 inverse frequencies, computed on the host in float64 then rounded to float32."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if scaling is None:
    pass
  elif scaling.kind == "linear":
    inv_freq = inv_freq / scaling.factor
  elif scaling.kind == "llama3":
    inv_freq = _llama3_scaled(inv_freq, scaling)
  else:
    raise ValueError(f"unknown rope scaling {scaling.kind!r}")
  return inv_freq.astype(np.float32)


def _llama3_scaled(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
  # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
  low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
  smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
  smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
  is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(is_medium, smoothed, scaled)


def apply_rotary(x_BxTxNxH: jnp.ndarray, positions_BxT: jnp.ndarray, inv_freq: np.ndarray) -> jnp.ndarray:
  """Rotates pairs (i, i + H/2) of each head by position * frequency, in float32."""
  angles_BxTxH2 = positions_BxT[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)
  angles_BxTx1xH = jnp.concatenate([angles_BxTxH2, angles_BxTxH2], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(angles_BxTx1xH), jnp.sin(angles_BxTx1xH)
  x = x_BxTxNxH.astype(jnp.float32)
  first, second = jnp.split(x, 2, axis=-1)
  rotated_half = jnp.concatenate([-second, first], axis=-1)
  return (x * cos + rotated_half * sin).astype(x_BxTxNxH.dtype)
