"""How a row's next token is chosen from its logits: greedy, or sampled at a temperature from
what top-k and top-p (nucleus) leave, the nucleus found without sorting the vocabulary.

Shapes: B batch, V vocab.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
  """How the next token is chosen: greedy when `temperature` is 0 or `top_k` is 1."""

  temperature: float = 0.0
  top_k: int = 0  # 0 = no top-k filtering
  top_p: float = 1.0  # 1 = no nucleus filtering

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

  @property
  def greedy(self) -> bool:
    return self.temperature == 0 or self.top_k == 1


def filtered_logits(logits_BxV: jax.Array, settings: SamplingSettings) -> jax.Array:
  """Logits with temperature applied and tokens outside top-k / top-p set to -inf."""
  logits = logits_BxV.astype(jnp.float32) / settings.temperature
  if settings.top_k:
    kth_largest = jax.lax.top_k(logits, settings.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth_largest, -jnp.inf, logits)
  if settings.top_p < 1:
    logits = jnp.where(nucleus(logits, settings.top_p), logits, -jnp.inf)
  return logits


def _ordered_keys(x: jax.Array) -> jax.Array:
  """float32 → int32 keys in the same order (negative floats' magnitude bits reversed)."""
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  return jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


def nucleus(logits_BxV: jax.Array, top_p: float) -> jax.Array:
  """The tokens to keep under top-p: each token whose more probable tokens (ties excluded) hold
  less than `top_p` of the mass — the most probable ones until their mass reaches `top_p`, the
  one crossing it and its ties included.

  Without a sort of the vocabulary (sorting [B, V] at every step took most of a sampled decode
  step on the CPU; benchmarks/RESULTS.md): the threshold is found by bisection over the logits'
  2^32 ordered float keys, 32 masked sums of the probabilities, exact to the bit."""
  logits_BxV = logits_BxV.astype(jnp.float32)
  probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)
  keys_BxV = _ordered_keys(logits_BxV)

  def mass_above(key_Bx1):  # the probability of the tokens whose key exceeds key_Bx1
    return jnp.sum(jnp.where(keys_BxV > key_Bx1, probs_BxV, 0.0), axis=-1, keepdims=True)

  def halve(_, bounds):  # invariant: mass_above(low) >= top_p > mass_above(high)
    low, high = bounds
    middle = (low >> 1) + (high >> 1) + (low & high & 1)  # floor((low + high) / 2) without overflow
    below = mass_above(middle) < top_p
    return jnp.where(below, low, middle), jnp.where(below, middle, high)

  low = jnp.min(keys_BxV, axis=-1, keepdims=True) - 1  # everything above it: mass 1
  high = jnp.max(keys_BxV, axis=-1, keepdims=True)  # nothing above it: mass 0
  _, threshold = jax.lax.fori_loop(0, 32, halve, (low, high))
  return keys_BxV >= threshold


def greedy_tokens(logits_BxV: jax.Array) -> jax.Array:
  """`argmax` (the first index of the largest logit) as two plain reductions.

  XLA:CPU lowers `jnp.argmax`'s paired value-and-index reduction several times slower than
  a max followed by a min over the indices that reach it.
  """
  vocab = logits_BxV.shape[-1]
  top_Bx1 = logits_BxV.max(axis=-1, keepdims=True)
  first = jnp.min(jnp.where(logits_BxV == top_Bx1, jnp.arange(vocab, dtype=jnp.int32), vocab), axis=-1)
  return jnp.minimum(first, vocab - 1)  # a row of NaNs matches nothing; keep the index in range


def choose_tokens(logits_BxV: jax.Array, keys_B: jax.Array, settings: SamplingSettings) -> jax.Array:
  if settings.greedy:
    return greedy_tokens(logits_BxV)
  filtered = filtered_logits(logits_BxV, settings)
  return jax.vmap(jax.random.categorical)(keys_B, filtered).astype(jnp.int32)
