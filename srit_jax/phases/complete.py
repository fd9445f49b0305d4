"""Greedy chat completion of a few prompts: the smallest end-to-end use of a loaded model."""

from __future__ import annotations

import time

from srit_jax.configs import checks
from srit_jax.conversion import loading
from srit_jax.generation import batched as generation


def run(config) -> list[str]:
  checks.check(config, "complete")
  """Loads `config.model`, answers each of `config.prompts` greedily and prints the answers."""
  start = time.perf_counter()
  model = loading.load_model(config.model, dtype=config.dtype, param_dtype=config.dtype, progress=True)
  print(f"loaded {config.model} in {time.perf_counter() - start:.1f}s")
  prompts = []
  for prompt in config.prompts:
    messages = [{"role": "user", "content": prompt}]
    prompts.append(model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
  start = time.perf_counter()
  outputs = generation.greedy_generate(model.config, model.params, prompts, config.max_new_tokens)
  seconds = time.perf_counter() - start
  answers = [model.tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in outputs]
  for prompt, answer in zip(config.prompts, answers):
    print(f"\n> {prompt}\n{answer}")
  new_tokens = sum(len(o) for o in outputs)
  print(f"\n{new_tokens} new tokens in {seconds:.1f}s, compilation included")
  return answers
