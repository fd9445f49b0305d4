"""Decoding throughput beside `transformers` generate, and against the memory roofline: greedy,
or sampled (`--temperature`, `--top_p`, `--top_k`, as refine samples the student's answers).

    python benchmarks/generate.py                                            # SmolLM2-135M, CPU
    python benchmarks/generate.py --preset=tinyllama-1.1b --dtype=bfloat16 --param_dtype=bfloat16 \\
        --batches=64,256 --prompt=128 --new_tokens=128 --baseline=hf_generate  # on a GPU
    python benchmarks/generate.py --batches=64 --new_tokens=64 --temperature=0.7 --top_p=0.95  # refine's sampling

Random prompt tokens of `prompt` positions, every row decoding exactly `new_tokens` tokens (EOS
off), greedy or sampled alike on both sides. Ours: `generation.generate` (prefill + a `lax.while_loop` of
decode steps, one jitted program) over every local device. Time to first token is a run with
one new token; tokens/s counts every new token over the whole call, prefill included, and
decode-only tokens/s the tokens after the first over the time after it. On accelerators the
decode roofline is the time to read the weights and the KV cache once per step at the device's
HBM bandwidth; the report gives the fraction of it reached.
"""

from __future__ import annotations

import time

import common
from absl import app, flags

_BATCHES = flags.DEFINE_list("batches", ["1", "8"], "batch sizes")
_PROMPT = flags.DEFINE_integer("prompt", 96, "prompt positions")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 32, "tokens generated per row")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0: greedy; else sampled at this temperature")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling: the mass kept (1 = off)")
_TOP_K = flags.DEFINE_integer("top_k", 0, "top-k sampling (0 = off)")


def _prompts(batch, length, vocab):
  import numpy as np

  return np.random.default_rng(0).integers(3, vocab, (batch, length)).tolist()


def ours(model, prompts, new_tokens: int) -> float:
  import jax

  from srit_jax.generation import batched
  from srit_jax.generation.next_token import SamplingSettings

  settings = SamplingSettings(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)

  def call():
    out = batched.generate(
      model.config, model.params, prompts, max_new_tokens=new_tokens, eos_ids=(), mesh=model.mesh, settings=settings
    )
    jax.block_until_ready(out[0].tokens)

  seconds = common.median_seconds(call)
  if new_tokens > 1:
    common.profile(call)
  return seconds


def hf_generate(config, prompts, new_tokens: int) -> float:
  import torch

  model = common.torch_model(config).eval()
  if common.DTYPE.value == "bfloat16":
    model = model.to(torch.bfloat16)
  ids = torch.as_tensor(prompts, dtype=torch.long, device=common.torch_device())

  sampling = {"do_sample": False}
  if _TEMPERATURE.value > 0:
    sampling = dict(do_sample=True, temperature=_TEMPERATURE.value, top_p=_TOP_P.value, top_k=_TOP_K.value or None)

  def call():
    with torch.no_grad():
      model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=0,
        **sampling,
      )
    common.torch_sync()

  return common.median_seconds(call)


def roofline_step_s(model, batch: int, length: int) -> float | None:
  """Seconds one decode step needs to read the weights and a `length`-position KV cache."""
  import jax

  bandwidth = common.hbm_bandwidth()
  if bandwidth is None:
    return None
  config = model.config
  weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(model.params))
  cache_bytes = 2 * config.num_layers * config.num_kv_heads * config.head_dim * length * batch * 2  # bfloat16
  return (weight_bytes + cache_bytes) / (bandwidth * jax.device_count())


def _figures(batch, first_s, call_s, new_tokens) -> dict:
  decode_s = max(call_s - first_s, 1e-9)
  return {
    "call_s": call_s,
    "first_token_s": first_s,
    "tokens_per_s": batch * new_tokens / call_s,
    "decode_tokens_per_s": batch * (new_tokens - 1) / decode_s,
  }


def main(argv):
  del argv
  baselines = common.baselines(("hf_generate",))
  model = common.model()
  new = _NEW_TOKENS.value
  results = {
    "machine": common.machine(),
    "prompt": _PROMPT.value,
    "new_tokens": new,
    "sampling": {"temperature": _TEMPERATURE.value, "top_p": _TOP_P.value, "top_k": _TOP_K.value},
    "runs": [],
  }
  for batch in map(int, _BATCHES.value):
    prompts = _prompts(batch, _PROMPT.value, model.config.vocab_size)
    start = time.perf_counter()
    ours(model, prompts, 1)
    compile_s = time.perf_counter() - start  # warm-up and timing included: an upper bound
    run = {"batch": batch, "ours": _figures(batch, ours(model, prompts, 1), ours(model, prompts, new), new)}
    run["ours"]["first_call_s"] = compile_s
    step = roofline_step_s(model, batch, _PROMPT.value + new // 2)
    if step is not None:
      measured_step = (run["ours"]["call_s"] - run["ours"]["first_token_s"]) / max(new - 1, 1)
      run["ours"].update(roofline_step_s=step, fraction_of_roofline=step / measured_step)
    for baseline in baselines:
      figures = _figures(batch, hf_generate(model.config, prompts, 1), hf_generate(model.config, prompts, new), new)
      figures["ours_speedup"] = figures["call_s"] / run["ours"]["call_s"]
      run[baseline] = figures
    results["runs"].append(run)
  common.report(results)


if __name__ == "__main__":
  app.run(main)
