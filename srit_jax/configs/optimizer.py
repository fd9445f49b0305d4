"""AdamW settings, the `optimizer` block of the training configs (see srit_jax/training/optimizer.py)."""

import ml_collections

from srit_jax.configs import variants

VARIANTS = (("",),)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  variants(variant, __file__, *VARIANTS)
  config = ml_collections.ConfigDict()
  config.learning_rate = 2e-5  # peak learning rate
  config.schedule = "cosine"  # cosine | linear | constant, after warmup
  config.warmup_steps = 10  # linear warmup from 0
  config.end_lr_fraction = 0.1  # final learning rate as a fraction of the peak
  config.weight_decay = 0.0  # AdamW decay on kernels and embeddings only
  config.b1 = 0.9  # first-moment decay
  config.b2 = 0.999  # second-moment decay
  config.eps = 1e-8  # added to the second-moment root
  config.clip_norm = 1.0  # global gradient-norm clip; <= 0 disables
  return config
