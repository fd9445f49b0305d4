"""LoRA / QLoRA settings, the `lora` block of the training configs (see srit_jax/model/lora.py).

srit-jax sft --config=configs/sft.py --config.lora.rank=8 ...                      # LoRA
srit-jax sft --config=configs/sft.py --config.lora.rank=8 --config.lora.base_quantization=nf4  # QLoRA
"""

import ml_collections

from srit_jax.configs import variants

VARIANTS = (("",),)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  variants(variant, __file__, *VARIANTS)
  config = ml_collections.ConfigDict()
  config.rank = 0  # 0: full fine-tuning; else adapters of this rank train over a frozen base
  config.alpha = 16.0  # the adapters' update is scaled by alpha / rank
  config.targets = "q,k,v,o,gate,up,down"  # projections that get adapters
  config.dropout = 0.0  # dropout on the adapters' input while training
  config.base_dtype = "bfloat16"  # storage dtype of the frozen base (adapters stay in param_dtype)
  config.base_quantization = "none"  # none | int8 | nf4 (QLoRA): the frozen base quantized, per block of 64
  config.init_adapter = ""  # a PEFT adapter directory to start from (its rank, alpha and targets apply)
  return config
