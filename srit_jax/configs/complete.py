"""Greedy answers from SmolLM2-135M-Instruct (fetched from PyPI on first use).

srit-jax complete --config=configs/complete.py
srit-jax complete --config=configs/complete.py --config.max_new_tokens=64
"""

import ml_collections

from srit_jax.configs import variants

VARIANTS = (("",),)


def get_config(variant: str = ""):
  variants(variant, __file__, *VARIANTS)
  config = ml_collections.ConfigDict()
  config.model = "smollm2-135m-instruct"  # known name, HF directory or .gguf file
  config.dtype = "float32"  # compute dtype: float32 or bfloat16
  config.max_new_tokens = 48  # tokens generated per prompt at most
  config.prompts = (  # user messages, each sent through the model's chat template
    "What is the capital of France?",
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
  )
  return config
