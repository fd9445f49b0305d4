"""Generate from a model for a file of prompts (or a few given inline), streamed to JSONL.

    srit-jax generate --config=configs/generate.py --config.prompts_file=prompts.jsonl --out=gen.jsonl
    srit-jax generate --config=configs/generate.py --config.temperature=0.7 --config.num_samples=4

A prompts file is JSON Lines with a "prompt" field (and optionally "id"), or plain text with
one prompt per line. A killed run started again with the same --out continues where it stopped.
"""

import ml_collections

from srit_jax.configs import variants

VARIANTS = (("",),)


def get_config(variant: str = ""):
  variants(variant, __file__, *VARIANTS)
  config = ml_collections.ConfigDict()
  config.model = "smollm2-135m-instruct"  # known name, HF directory or .gguf file
  config.dtype = "float32"  # compute dtype: float32 or bfloat16
  config.prompts_file = ""  # .jsonl ({"prompt": ...}) or .txt (one per line); empty: use `prompts`
  config.prompts = ("Write a haiku about the sea.",)  # used when prompts_file is empty
  config.chat_template = True  # wrap each prompt in the model's chat template
  config.max_new_tokens = 128  # tokens generated per sample at most
  config.temperature = 0.0  # 0 = greedy
  config.top_k = 0  # 0 = off
  config.top_p = 1.0  # 1 = off
  config.num_samples = 1  # samples per prompt
  config.seed = 0  # run seed; each sample's seed derives from it and the sample's indices
  config.batch_size = 16  # rows per generation batch (prompts x samples)
  config.stop_strings = ()  # generation stops at the first of these; the text is cut before it
  config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # axis sizes; -1: the remaining devices
  return config
