"""Every attention kernel against the XLA path: the TPU splash kernel (run by Pallas's
interpreter on CPU) and the blockwise kernel, forward and gradients, on causal, packed,
sliding-window and grouped-query cases; and the one place that picks kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srit_jax import sharding
from srit_jax.model import attention

LENGTH = 256  # two splash blocks


def _inputs(case: str, heads: int, kv_heads: int, head_dim: int, dtype, batch: int = 2, seed: int = 0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(batch, LENGTH, heads, head_dim)), dtype)
  k = jnp.asarray(rng.normal(size=(batch, LENGTH, kv_heads, head_dim)), dtype)
  v = jnp.asarray(rng.normal(size=(batch, LENGTH, kv_heads, head_dim)), dtype)
  if case == "packed":  # three segments per row, the last one followed by padding
    lengths = [100, 90, 50]
    segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(LENGTH - 240)])
    positions = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(LENGTH - 240)])
  else:
    segments, positions = np.ones(LENGTH), np.arange(LENGTH)
  tile = lambda x: jnp.asarray(np.tile(x, (batch, 1)), jnp.int32)
  return q, k, v, tile(positions), tile(segments)


def _attend(kernel, q, k, v, positions, segments, window=None, mesh=None, **how):
  return attention.attend(
    q,
    k,
    v,
    q_positions_BxT=positions,
    q_segment_ids_BxT=segments,
    kv_positions_BxS=positions,
    kv_segment_ids_BxS=segments,
    sliding_window=window,
    kernel=kernel,
    mesh=mesh,
    **how,
  )


def _compare(kernel, case, heads, kv_heads, head_dim, dtype, window=None, gradients=True, **how):
  q, k, v, positions, segments = _inputs(case, heads, kv_heads, head_dim, dtype)
  real = np.asarray(segments)[..., None, None] > 0  # padded queries' outputs are not used

  def loss(kernel_name):
    def f(q, k, v):
      out = _attend(kernel_name, q, k, v, positions, segments, window, **how).astype(jnp.float32)
      return jnp.sum(jnp.where(real, out, 0.0) ** 2)

    return f

  ours = _attend(kernel, q, k, v, positions, segments, window, **how).astype(jnp.float32)
  reference = _attend("xla", q, k, v, positions, segments, window, **how).astype(jnp.float32)
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  np.testing.assert_allclose(np.where(real, ours, 0), np.where(real, reference, 0), atol=tolerance, rtol=tolerance)
  if gradients:
    ours_grads = jax.grad(loss(kernel), argnums=(0, 1, 2))(q, k, v)
    reference_grads = jax.grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", ours_grads, reference_grads):
      a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
      scale = np.max(np.abs(b))
      np.testing.assert_allclose(a / scale, b / scale, atol=tolerance, err_msg=f"d{name}")


CASES = [
  # (case, heads, kv heads, head dim, sliding window)
  ("causal", 4, 4, 64, None),
  ("packed", 4, 2, 64, None),
  ("causal", 4, 2, 128, 48),
  ("packed", 6, 2, 128, 64),
]


@pytest.mark.parametrize("kernel", ["splash", "blockwise"])
def test_kernels_equal_the_xla_path_on_packed_grouped_queries(kernel):
  _compare(kernel, "packed", 4, 2, 64, jnp.float32)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["splash", "blockwise"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case,heads,kv_heads,head_dim,window", CASES)
def test_kernels_equal_the_xla_path(kernel, dtype, case, heads, kv_heads, head_dim, window):
  _compare(kernel, case, heads, kv_heads, head_dim, dtype, window)


@pytest.mark.parametrize("kernel", ["splash", "blockwise"])
def test_kernels_soft_cap_and_scale_like_the_xla_path(kernel):
  # Gemma 2's attention: scores scaled by a query scalar other than H^-1/2, then soft-capped.
  _compare(kernel, "packed", 4, 2, 64, jnp.float32, window=48, scale=0.2, logit_softcap=5.0)


def test_soft_cap_is_cap_times_tanh_of_the_scaled_scores():
  q, k, v, positions, segments = _inputs("causal", 2, 2, 16, jnp.float32, batch=1)
  ours = _attend("xla", q, k, v, positions, segments, scale=0.5, logit_softcap=1.5)
  scores = np.einsum("btnh,bsnh->bnts", q, k) * 0.5
  scores = 1.5 * np.tanh(scores / 1.5)
  scores = np.where(np.tril(np.ones((LENGTH, LENGTH), bool)), scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  np.testing.assert_allclose(ours, np.einsum("bnts,bsnh->btnh", weights, v), atol=1e-5)


@pytest.mark.parametrize("kernel", ["xla", "splash", "blockwise"])
def test_a_traced_window_switch_picks_the_windowed_or_global_form(kernel):
  # Under the layer scan, Gemma's sliding and global layers differ by a traced flag.
  q, k, v, positions, segments = _inputs("packed", 4, 2, 64, jnp.float32)
  for on in (True, False):
    switched = jax.jit(lambda flag, q=q: _attend(kernel, q, k, v, positions, segments, 48, window_on=flag))(on)
    fixed = _attend("xla", q, k, v, positions, segments, 48 if on else None)
    real = np.asarray(segments)[..., None, None] > 0
    np.testing.assert_allclose(np.where(real, switched, 0), np.where(real, fixed, 0), atol=1e-5)


def test_blockwise_takes_key_lengths_that_are_not_whole_blocks():
  q, k, v, positions, segments = _inputs("packed", 4, 2, 64, jnp.float32)
  out = attention.blockwise_attend(
    q,
    k,
    v,
    q_positions_BxT=positions,
    q_segment_ids_BxT=segments,
    kv_positions_BxS=positions,
    kv_segment_ids_BxS=segments,
    block=96,  # 256 keys: two blocks and a padded third
  )
  real = np.asarray(segments)[..., None, None] > 0
  reference = _attend("xla", q, k, v, positions, segments)
  np.testing.assert_allclose(np.where(real, out, 0), np.where(real, reference, 0), atol=1e-5)


def _branched_row(trunk=40, first=30, second=25):
  """Positions, segments and branch ids of one segment: a trunk and two branches after it."""
  positions = np.concatenate([np.arange(trunk), trunk + np.arange(first), trunk + np.arange(second)])
  branches = np.concatenate([np.zeros(trunk), np.ones(first), np.full(second, 2)])
  pad = LENGTH - len(positions)
  segments = np.concatenate([np.ones(len(positions)), np.zeros(pad)])
  as_rows = lambda x: jnp.asarray(np.concatenate([x, np.zeros(pad)])[None], jnp.int32)
  return as_rows(positions), jnp.asarray(segments[None], jnp.int32), as_rows(branches)


@pytest.mark.parametrize("kernel", ["xla", "blockwise"])
def test_each_branch_attends_as_if_trunk_and_branch_were_alone(kernel):
  trunk, first, second = 40, 30, 25
  q, k, v, _, _ = _inputs("causal", 4, 2, 64, jnp.float32, batch=1)
  positions, segments, branches = _branched_row(trunk, first, second)
  branched = _attend(kernel, q, k, v, positions, segments, q_branch_ids_BxT=branches, kv_branch_ids_BxS=branches)
  for start, n in ((trunk, first), (trunk + first, second)):
    alone = np.r_[0:trunk, start : start + n]  # the trunk, then this branch only
    pick = lambda x, alone=alone: x[:, alone]
    ids = jnp.ones((1, len(alone)), jnp.int32)
    reference = _attend("xla", pick(q), pick(k), pick(v), pick(positions), ids)
    np.testing.assert_allclose(pick(branched), reference, atol=1e-5)


def test_blockwise_equals_the_xla_path_on_branched_segments():
  positions, segments, branches = _branched_row()
  q, k, v, _, _ = _inputs("causal", 4, 2, 64, jnp.float32, batch=1)
  real = np.asarray(segments)[..., None, None] > 0
  how = dict(q_branch_ids_BxT=branches, kv_branch_ids_BxS=branches)
  for name in ("blockwise", "xla"):
    out = _attend(name, q, k, v, positions, segments, **how)
    grads = jax.grad(
      lambda q, k, v, name=name: jnp.sum(jnp.where(real, _attend(name, q, k, v, positions, segments, **how), 0) ** 2),
      argnums=(0, 1, 2),
    )(q, k, v)
    if name == "blockwise":
      blockwise = (out, grads)
  np.testing.assert_allclose(np.where(real, blockwise[0], 0), np.where(real, out, 0), atol=1e-5)
  for a, b in zip(blockwise[1], grads):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_splash_refuses_branched_segments():
  positions, segments, branches = _branched_row()
  q, k, v, _, _ = _inputs("causal", 4, 2, 64, jnp.float32, batch=1)
  with pytest.raises(ValueError, match="cannot attend within branched segments"):
    _attend("splash", q, k, v, positions, segments, q_branch_ids_BxT=branches, kv_branch_ids_BxS=branches)


def test_splash_on_a_mesh_equals_one_device():
  mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
  q, k, v, positions, segments = _inputs("packed", 4, 2, 64, jnp.float32, batch=4)
  on_mesh = jax.jit(lambda *a: _attend("splash", *a, mesh=mesh))(q, k, v, positions, segments)
  alone = _attend("splash", q, k, v, positions, segments)
  np.testing.assert_allclose(on_mesh, alone, atol=1e-6)


def test_the_kernel_is_chosen_by_platform_dtype_and_length():
  assert attention.choose_kernel("auto", "tpu", jnp.bfloat16, 1024) == "splash"
  assert attention.choose_kernel("auto", "tpu", jnp.float32, 1000) == "xla"  # not whole splash blocks
  assert attention.choose_kernel("auto", "gpu", jnp.bfloat16, 1024) == "cudnn"
  assert attention.choose_kernel("auto", "gpu", jnp.float32, 1024) == "blockwise"  # no fp32 scores kept
  assert attention.choose_kernel("auto", "cpu", jnp.float32, 1024) == "xla"
  assert attention.choose_kernel("blockwise", "cpu", jnp.float32, 7) == "blockwise"
  with pytest.raises(ValueError, match="attention kernel 'flash3' is not one of"):
    attention.choose_kernel("flash3", "cpu", jnp.float32, 8)
  # Soft-capping (Gemma 2): cuDNN cannot, so "auto" falls back and an explicit request is refused.
  assert attention.choose_kernel("auto", "gpu", jnp.bfloat16, 1024, logit_softcap=50.0) == "blockwise"
  assert attention.choose_kernel("auto", "tpu", jnp.bfloat16, 1024, logit_softcap=50.0) == "splash"
  with pytest.raises(ValueError, match=r"attention='cudnn' cannot soft-cap.*attn_logit_softcap is 50\.0"):
    attention.choose_kernel("cudnn", "gpu", jnp.bfloat16, 1024, logit_softcap=50.0)
