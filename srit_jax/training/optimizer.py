"""The optax optimiser: AdamW with warmup + cosine / linear / constant, clipping, decay mask.

Weight decay applies to matrices only (projection kernels and embeddings), never to norm
scales or biases. What is trainable is a mask over the parameter tree, not a property of
the model, so adapters can later train alone against frozen base weights.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  warmup = int(config.warmup_steps)
  decay_steps = max(total_steps - warmup, 1)
  peak, end = float(config.learning_rate), float(config.learning_rate) * float(config.end_lr_fraction)
  if config.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=float(config.end_lr_fraction))
  elif config.schedule == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif config.schedule == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"schedule {config.schedule!r} is not one of {SCHEDULES}")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
  """True for leaves that take weight decay: kernels and embeddings."""

  def is_matrix(path, _):
    return getattr(path[-1], "key", None) in ("kernel", "embedding")

  return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """AdamW after global-norm clipping (`clip_norm` <= 0 turns clipping off)."""
  parts = []
  if float(config.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(config.clip_norm)))
  parts.append(
    optax.adamw(
      learning_rate_schedule(config, total_steps),
      b1=float(config.b1),
      b2=float(config.b2),
      eps=float(config.eps),
      weight_decay=float(config.weight_decay),
      mask=decay_mask,
    )
  )
  return optax.chain(*parts)
