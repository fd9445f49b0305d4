"""Token log-probabilities and cross-entropy, computed in chunks along the sequence.

The [B, T, V] float32 logits are never materialised: hidden states are projected to the
vocabulary one chunk of C positions at a time, and the backward pass recomputes each
chunk's logits instead of storing them. Chunks are of equal length, at most the chunk size
(448 positions in chunks of 128: four of 112, not four of 128 and 64 positions of padding). Where
only some positions carry loss, the output layer can run at those alone (`at`).

Shapes: B batch, T length, D embed, V vocab, C chunk length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from srit_jax.model import decoder as model_lib


def chunked_token_log_probs(
  model: model_lib.Transformer,
  params,
  hidden_BxTxD: jax.Array,
  targets_BxT: jax.Array,
  chunk_size: int = 128,
  base=None,
) -> jax.Array:
  """log p(target_t | prefix) for every position, float32 [B, T] (`params` trained over `base`);
  chunks of at most `chunk_size` positions."""
  batch, length, dim = hidden_BxTxD.shape
  num_chunks = -(-length // chunk_size)
  chunk_size = -(-length // num_chunks)
  pad = num_chunks * chunk_size - length
  hidden = jnp.pad(hidden_BxTxD, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
  hidden_NxBxCxD = hidden.reshape(batch, num_chunks, chunk_size, dim).transpose(1, 0, 2, 3)
  targets_NxBxC = targets.reshape(batch, num_chunks, chunk_size).transpose(1, 0, 2)

  @jax.checkpoint
  def one_chunk(args):
    hidden_BxCxD, targets_BxC = args
    logits = model.apply(model_lib.trained_variables(params, base), hidden_BxCxD, method="logits_from_hidden").astype(
      jnp.float32
    )
    target_logits = jnp.take_along_axis(logits, targets_BxC[..., None], axis=-1)[..., 0]
    return target_logits - jax.nn.logsumexp(logits, axis=-1)

  log_probs_NxBxC = jax.lax.map(one_chunk, (hidden_NxBxCxD, targets_NxBxC))
  return log_probs_NxBxC.transpose(1, 0, 2).reshape(batch, -1)[:, :length]


def token_log_probs(
  config, params, rows: dict, *, mesh=None, chunk_size: int = 128, base=None, dropout_rng=None, at=None
):
  """log p(target_t | prefix) of every position of `rows` (tokens, positions, segment ids, targets;
  branch ids where rows hold shared-prompt pairs), float32 [B, T]: the model's forward to its
  last hidden state, then the chunked output layer. With `at` (positions per row [B, K]), the
  output layer runs at those positions only: [B, K] (a position past the row's end reads its
  last one).

  `params` is the trained tree: all parameters, or LoRA adapters over `base`. With
  `dropout_rng`, adapter dropout is on.
  """
  model = model_lib.Transformer(config, mesh)
  hidden = model.apply(
    model_lib.trained_variables(params, base),
    rows["tokens"],
    rows["positions"],
    rows["segment_ids"],
    dropout_rng is None,
    rows.get("branch_ids"),
    method="hidden_states",
    rngs={} if dropout_rng is None else {"dropout": dropout_rng},
  )
  targets = rows["targets"]
  if at is not None:
    hidden, targets = gather_positions(hidden, at), gather_positions(targets, at)
  return chunked_token_log_probs(model, params, hidden, targets, chunk_size, base)


def gather_positions(values_BxTx_: jax.Array, at_BxK: jax.Array, fill_value=None) -> jax.Array:
  """values[b, at[b, k]], [B, K, ...]: a position past the row's end reads `fill_value`, or the
  row's last value when None."""
  mode = "clip" if fill_value is None else "fill"
  at = at_BxK.reshape(at_BxK.shape + (1,) * (values_BxTx_.ndim - 2))  # broadcast over trailing axes
  return jnp.take_along_axis(values_BxTx_, at, axis=1, mode=mode, fill_value=fill_value)


def weighted_nll_sum(log_probs_BxT: jax.Array, weights_BxT: jax.Array) -> jax.Array:
  """Sum of -log p weighted per token (0 outside the answer); divide by the batch's weight sum."""
  return -jnp.sum(log_probs_BxT * weights_BxT.astype(jnp.float32))
