"""The decoder against transformers: logits, packing, other attention kernels, remat and dtypes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_HF_CONFIGS, random_tokens, torch_logits

from srit_jax.conversion import hf_checkpoint
from srit_jax.model import decoder as model_lib


@pytest.mark.parametrize("family", sorted(TINY_HF_CONFIGS))
def test_logits_match_transformers(hf_model_dir, family):
  directory, torch_model = hf_model_dir(family)
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  tokens = random_tokens(2, 13)
  ours = np.asarray(model_lib.forward(config, params, jnp.asarray(tokens)))
  reference = torch_logits(torch_model, tokens)
  assert np.abs(reference).max() > 1.0, "reference logits too small to be a meaningful comparison"
  np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["mistral_sliding_window", "gemma2", "gemma3"])
def test_packed_rows_equal_segments_run_separately(hf_model_dir, family):
  directory, _ = hf_model_dir(family)
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  lengths = [5, 7, 4]
  segments = [random_tokens(1, n, seed=i)[0] for i, n in enumerate(lengths)]
  packed = np.concatenate([*segments, np.zeros(2, np.int32)])[None]  # two padding tokens at the end
  segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(2)])[None]
  positions = np.concatenate([np.arange(n) for n in lengths] + [np.arange(2)])[None]
  packed_logits = np.asarray(
    model_lib.forward(config, params, packed, jnp.asarray(positions, jnp.int32), jnp.asarray(segment_ids, jnp.int32))
  )
  offset = 0
  for seg in segments:
    alone = np.asarray(model_lib.forward(config, params, seg[None]))
    np.testing.assert_allclose(packed_logits[0, offset : offset + len(seg)], alone[0], atol=1e-5, rtol=0)
    offset += len(seg)


@pytest.mark.parametrize("kernel", ["splash", "blockwise"])
def test_gemma_layers_under_other_kernels_equal_the_xla_path(hf_model_dir, kernel):
  # Sliding and global layers alternate under the layer scan (a traced switch per layer), with
  # soft-capped scores: every kernel takes both; splash needs whole 128-position rows.
  directory, _ = hf_model_dir("gemma2")
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  tokens = jnp.asarray(random_tokens(1, 128))
  reference = np.asarray(model_lib.forward(dataclasses.replace(config, attention="xla"), params, tokens))
  ours = np.asarray(model_lib.forward(dataclasses.replace(config, attention=kernel), params, tokens))
  np.testing.assert_allclose(ours, reference, atol=2e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_remat_policies_leave_logits_and_gradients_unchanged(hf_model_dir, family):
  directory, _ = hf_model_dir(family)
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  tokens = jnp.asarray(random_tokens(2, 8))

  def loss(params, config):
    return jnp.mean(model_lib.Transformer(config).apply({"params": params}, tokens) ** 2)

  loss_and_grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)  # as the training steps compile it
  base_loss, base_grads = loss_and_grads(params, config)
  for policy in ("full", "dots", "dots_no_batch"):
    remat_loss, remat_grads = loss_and_grads(params, dataclasses.replace(config, remat_policy=policy))
    np.testing.assert_allclose(remat_loss, base_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), remat_grads, base_grads)


def test_bfloat16_compute_and_parameters_stay_close_to_float32(hf_model_dir):
  directory, _ = hf_model_dir("qwen2_bias")
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  bf16_config, bf16_params = hf_checkpoint.load_hf_checkpoint(directory, dtype="bfloat16", param_dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16_params))
  tokens = jnp.asarray(random_tokens(2, 10))
  full = np.asarray(model_lib.forward(config, params, tokens))
  half = model_lib.forward(bf16_config, bf16_params, tokens)
  assert half.dtype == jnp.bfloat16
  scale = np.abs(full).max()
  assert np.abs(np.asarray(half, np.float32) - full).max() < 0.05 * scale
  assert (np.asarray(half, np.float32).argmax(-1) == full.argmax(-1)).mean() > 0.9


def test_init_params_carry_logical_axes_and_finite_logits():
  config = model_lib.ModelConfig("llama", 64, 32, 48, 2, 4, 2, 8)
  boxed = model_lib.boxed_param_shapes(config)
  names = jax.tree.leaves(
    jax.tree.map(lambda x: x.names, boxed, is_leaf=lambda x: hasattr(x, "names")),
    is_leaf=lambda x: isinstance(x, tuple),
  )
  assert names and all(all(isinstance(n, str) for n in leaf) for leaf in names)
  params = model_lib.init_params(config, jax.random.key(0))
  logits = model_lib.forward(config, params, jnp.asarray(random_tokens(1, 5, vocab=64)))
  assert np.isfinite(np.asarray(logits)).all()
