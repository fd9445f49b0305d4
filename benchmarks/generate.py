"""Generation throughput of SmolLM2-135M-Instruct, beside transformers `generate` in the same run.

    python benchmarks/generate.py                       # batches 1, 8, 64; 64 new tokens; float32
    python benchmarks/generate.py --batches=64 --new_tokens=128

Prompts are real GSM8K test questions in the chat template (left-padded; our prompt bucket is
the next power of two). Both sides decode greedily for exactly `new_tokens` tokens (EOS off),
on the same thread count. Time to first token is a separate run with one new token.
Tokens/s = batch x new tokens / wall time of the whole call, prefill included; decode-only
tokens/s = batch x (new tokens - 1) / (that wall time - time to first token).
Also reports how many compilations a whole GSM8K test pass would need under bucketing.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import sys
import time

from absl import app, flags

_BATCHES = flags.DEFINE_list("batches", ["1", "8", "64"], "batch sizes")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "tokens generated per row")
_REPEATS = flags.DEFINE_integer("repeats", 2, "timed calls per measurement")
_TORCH = flags.DEFINE_bool("torch", True, "also time transformers generate")
_DATA = flags.DEFINE_string(
  "data", str(pathlib.Path(__file__).parents[2] / "shared/data/benchmarks/gsm8k/test.jsonl"), "GSM8K test JSONL"
)
_OUT = flags.DEFINE_string("out", None, "write the figures as JSON here too")

sys.path.insert(0, str(pathlib.Path(__file__).parent))


def _ours(model, tokens, mask, new_tokens):
  import jax.numpy as jnp
  import numpy as np

  from srit_jax.generation import sampler as sampling

  out = sampling.sample(
    model.config,
    model.params,
    tokens,
    mask,
    np.zeros(len(tokens), np.int32),
    jnp.asarray([-1], jnp.int32),
    jnp.full((1, 1), -1, jnp.int32),
    settings=sampling.SamplingSettings(),
    max_new_tokens=new_tokens,
  )
  return out[0].block_until_ready()


def _theirs(reference, input_ids, attention_mask, pad_id, new_tokens):
  import torch

  with torch.no_grad():
    return reference.generate(
      input_ids=input_ids,
      attention_mask=attention_mask,
      max_new_tokens=new_tokens,
      min_new_tokens=new_tokens,
      do_sample=False,
      pad_token_id=pad_id,
    )


def main(argv):
  del argv
  import common

  from srit_jax.conversion import fetch, loading
  from srit_jax.generation import batched as generation
  from srit_jax.generation import jsonl

  model = loading.load_model("smollm2-135m-instruct")
  with open(_DATA.value, encoding="utf-8") as f:
    questions = [json.loads(line)["question"] for line in f]
  prompts = [jsonl.encode_prompt(model.tokenizer, {"prompt": q}, True, "gsm8k") for q in questions]
  limit = model.config.max_position_embeddings - _NEW_TOKENS.value
  batch_widths = {
    generation.prompt_bucket(max(len(p) for p in prompts[i : i + 16]), limit) for i in range(0, len(prompts), 16)
  }
  results = {
    "machine": common.machine(),
    "new_tokens": _NEW_TOKENS.value,
    "dtype": "float32",
    "gsm8k_test_prompts": len(prompts),
    "gsm8k_compilations_at_batch_16": len(batch_widths),
    "runs": [],
  }
  reference = None
  if _TORCH.value:
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count() or 1)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
      str(fetch.fetch_model("smollm2-135m-instruct")), dtype=torch.float32
    ).eval()

  for batch in map(int, _BATCHES.value):
    rows = prompts[:batch]
    width = generation.prompt_bucket(max(len(p) for p in rows), limit)
    tokens, mask = generation.left_pad(rows, model.config.pad_token_id, width)
    ours = functools.partial(_ours, model, tokens, mask)
    start = time.perf_counter()
    ours(_NEW_TOKENS.value)
    first_call = time.perf_counter() - start
    ours(1)
    seconds = common.median(common.time_call(functools.partial(ours, _NEW_TOKENS.value), _REPEATS.value))
    ttft = common.median(common.time_call(functools.partial(ours, 1), _REPEATS.value))
    run = {
      "batch": batch,
      "prompt_tokens_max": max(len(p) for p in rows),
      "prompt_bucket": width,
      "ours_tokens_per_s": batch * _NEW_TOKENS.value / seconds,
      "ours_decode_tokens_per_s": batch * (_NEW_TOKENS.value - 1) / (seconds - ttft),
      "ours_ttft_s": ttft,
      "ours_first_call_s": first_call,
    }
    if reference is not None:
      import torch

      exact_tokens, exact_mask = generation.left_pad(rows, model.config.pad_token_id)
      theirs = functools.partial(
        _theirs,
        reference,
        torch.as_tensor(exact_tokens, dtype=torch.long),
        torch.as_tensor(exact_mask, dtype=torch.long),
        model.config.pad_token_id,
      )
      theirs(2)
      torch_seconds = common.median(common.time_call(functools.partial(theirs, _NEW_TOKENS.value), _REPEATS.value))
      torch_ttft = common.median(common.time_call(functools.partial(theirs, 1), _REPEATS.value))
      run.update(
        torch_tokens_per_s=batch * _NEW_TOKENS.value / torch_seconds,
        torch_decode_tokens_per_s=batch * (_NEW_TOKENS.value - 1) / (torch_seconds - torch_ttft),
        torch_ttft_s=torch_ttft,
        speedup_vs_torch=torch_seconds / seconds,
        decode_speedup_vs_torch=(torch_seconds - torch_ttft) / (seconds - ttft),
      )
    results["runs"].append(run)
    print(json.dumps(run), flush=True)

  common.report(results, _OUT.value)


if __name__ == "__main__":
  app.run(main)
