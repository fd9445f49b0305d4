"""The decoder against its KV cache (srit_jax/model/decoding.py): a prefill, a chunk and single
steps give the logits of one full forward pass, for every family."""

import numpy as np
import pytest
from conftest import random_tokens

from srit_jax.conversion import hf_checkpoint
from srit_jax.generation import batched as generation
from srit_jax.model import decoder as model_lib
from srit_jax.model import decoding, kv_cache


@pytest.mark.parametrize(
  "family, rows_per_chunk",
  [
    ("llama", None),
    ("llama", 1),
    ("mistral_sliding_window", None),
    ("qwen2_bias", 1),
    ("gemma2", None),
    ("gemma3", 1),
    ("qwen3", None),
    ("phi3", None),
  ],
)
def test_kv_cache_prefill_chunk_and_steps_equal_full_forward(hf_model_dir, family, rows_per_chunk):
  directory, _ = hf_model_dir(family)
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  # Two rows of different prompt lengths, left-padded; then a 3-token chunk, then 4 single steps.
  prompts = [list(random_tokens(1, 7, seed=1)[0]), list(random_tokens(1, 4, seed=2)[0])]
  continuation = random_tokens(2, 7, seed=3)
  tokens, mask = generation.left_pad(prompts, pad_id=0)
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  cache = kv_cache.init_cache(config, 2, tokens.shape[1] + continuation.shape[1])
  last_logits, cache = decoding.prefill(config, params, tokens, positions, mask, cache, rows_per_chunk=rows_per_chunk)
  layer_params = decoding.unstack_layers(params)
  outputs = [last_logits[:, None]]
  chunks = [(0, 3), (3, 4), (4, 5), (5, 6), (6, 7)]
  for start, stop in chunks:
    chunk_positions = positions[:, -1:] + 1 + np.arange(start, stop)[None]
    logits, cache = decoding.decode(
      config,
      params,
      layer_params,
      continuation[:, start:stop],
      chunk_positions,
      np.ones((2, stop - start), np.int32),
      cache,
    )
    outputs.append(logits)
  assert int(cache.end) == tokens.shape[1] + continuation.shape[1]
  ours_all = np.concatenate([np.asarray(o) for o in outputs], axis=1)
  for row, prompt in enumerate(prompts):
    full = np.concatenate([prompt, continuation[row]])[None]
    reference = np.asarray(model_lib.forward(config, params, full))[0, len(prompt) - 1 :]
    np.testing.assert_allclose(ours_all[row], reference, atol=2e-5, rtol=0)
