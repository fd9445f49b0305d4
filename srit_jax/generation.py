"""Greedy generation with the KV cache: prefill, then one token at a time in a `lax.while_loop`.

Prompts of different lengths are left-padded into one batch; each row keeps its own
positions, and padding slots carry segment id 0 so nothing attends to them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from srit_jax import model as model_lib
from srit_jax.model_config import ModelConfig


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [B, P], mask [B, P]) with every prompt right-aligned."""
  if not prompts or any(len(p) == 0 for p in prompts):
    raise ValueError("every prompt needs at least one token")
  width = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, width - len(prompt) :] = prompt
    mask[row, width - len(prompt) :] = 1
  return tokens, mask


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "mesh"))
def _greedy(config: ModelConfig, params, tokens_BxP, mask_BxP, eos_ids, max_new_tokens: int, mesh: Mesh | None):
  model = model_lib.Transformer(config, mesh)
  batch, prompt_len = tokens_BxP.shape
  positions_BxP = jnp.maximum(jnp.cumsum(mask_BxP, axis=1) - 1, 0)
  cache = model_lib.init_cache(config, batch, prompt_len + max_new_tokens)
  logits, cache = model.apply({"params": params}, tokens_BxP, positions_BxP, mask_BxP, cache, method="decode")
  next_B = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
  position_B = positions_BxP[:, -1] + 1
  out_BxN = jnp.full((batch, max_new_tokens), -1, jnp.int32)

  def cond(state):
    step, _, _, _, done_B, _ = state
    return (step < max_new_tokens) & ~jnp.all(done_B)

  def body(state):
    step, token_B, position_B, cache, done_B, out_BxN = state
    out_BxN = out_BxN.at[:, step].set(jnp.where(done_B, -1, token_B))
    done_B = done_B | jnp.isin(token_B, eos_ids)
    logits, cache = model.apply(
      {"params": params},
      token_B[:, None],
      position_B[:, None],
      jnp.ones((batch, 1), jnp.int32),
      cache,
      method="decode",
    )
    token_B = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    return step + 1, token_B, position_B + 1, cache, done_B, out_BxN

  done_B = jnp.zeros((batch,), bool)
  state = (jnp.int32(0), next_B, position_B, cache, done_B, out_BxN)
  _, _, _, _, _, out_BxN = jax.lax.while_loop(cond, body, state)
  return out_BxN


def greedy_generate(
  config: ModelConfig,
  params,
  prompts: Sequence[Sequence[int]],
  max_new_tokens: int,
  *,
  eos_ids: Sequence[int] | None = None,
  mesh: Mesh | None = None,
) -> list[list[int]]:
  """New token ids per prompt, up to and including the first EOS, at most `max_new_tokens`."""
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
  eos_ids = tuple(config.eos_token_ids if eos_ids is None else eos_ids)
  tokens, mask = left_pad(prompts, config.pad_token_id or 0)
  if tokens.shape[1] + max_new_tokens > config.max_position_embeddings:
    raise ValueError(
      f"prompt ({tokens.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context "
      f"of {config.max_position_embeddings}"
    )
  out = _greedy(config, params, tokens, mask, jnp.asarray(eos_ids or (-1,), jnp.int32), max_new_tokens, mesh)
  return [[int(t) for t in row if t >= 0] for row in np.asarray(out)]
