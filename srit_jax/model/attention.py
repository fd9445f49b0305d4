"""The one attention function of the model; its kernel is chosen in one place, `choose_kernel`.

Masking is described by positions and segment ids (0 = padding), never by a ready-made
[B, T, S] mask, so that every kernel can take it its own way. Optional branch ids describe a
tree inside a segment (shared-prompt preference pairs): a key of branch 0 (the trunk) is seen
by every query of its segment, a key of branch b > 0 only by queries of branch b; all kernels
but splash take them.

- "splash" (TPU): the Pallas splash-attention kernel — causal, packed segments, sliding
  window, grouped-query heads, logit soft-capping — per device under `shard_map`. Its
  backward pass keeps no [T, S] scores. Sequences must be whole 128-position blocks.
- "blockwise" (any backend; GPU in float32): online-softmax attention over key blocks with
  each block rematerialised in the backward pass, so no [B, N, T, S] scores are kept.
- "cudnn" (GPU, half precision): cuDNN's fused attention in its causal mode (it skips the key
  blocks above the diagonal), with packed segments and padding as a [B, 1, T, S] mask that it
  adds as a bias; it cannot soft-cap scores.
- "xla" (CPU): `jax.nn.dot_product_attention` on XLA, scores materialised (fast for short
  rows); with soft-capping, the same computation written out.

`choose_kernel(requested, platform, dtype, length, logit_softcap)` turns "auto" into one of
these by the platform the program is compiled for (the mesh's devices, which for an
ahead-of-time TPU plan are TPU devices on a CPU host) and refuses a kernel that cannot do
what the model asks, so every caller — training, generation, `srit-jax plan` — reports and
uses the same choice; `kernel_for(config, platform, length)` asks it for a model.

Layers that differ in their window (Gemma 2/3) run under the layer scan with a traced
`window_on` flag: the materialised kernels mask by it, the others switch between their
windowed and global forms with `lax.cond`.

Shapes: B batch, T query length, S key length, N query heads, K key/value heads, G = N / K,
H head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from srit_jax.model.config import ATTENTION_KERNELS as KERNELS

SPLASH_BLOCK = 128  # sequences for the splash kernel are whole blocks of this many positions
_MASKED = -1e30


def platform_of(mesh) -> str:
  """The platform a program runs on: its mesh's devices, else JAX's default backend."""
  if mesh is not None:
    return mesh.devices.flat[0].platform
  return jax.default_backend()


CANNOT_SOFTCAP = ("cudnn",)


def choose_kernel(requested: str, platform: str, dtype, length: int, logit_softcap: float | None = None) -> str:
  """The kernel for queries of `length` positions: `requested`, or for "auto" the platform's own
  that can do what is asked (with soft-capping, cuDNN gives way to the blockwise kernel)."""
  if requested not in KERNELS:
    raise ValueError(f"attention kernel {requested!r} is not one of {KERNELS}")
  if requested != "auto":
    if logit_softcap is not None and requested in CANNOT_SOFTCAP:
      raise ValueError(
        f"attention={requested!r} cannot soft-cap attention logits (the model's attn_logit_softcap is "
        f"{logit_softcap}); use attention='auto' or one of "
        f"{', '.join(k for k in KERNELS if k not in CANNOT_SOFTCAP and k != 'auto')}"
      )
    return requested
  if platform == "tpu":
    return "splash" if length % SPLASH_BLOCK == 0 else "xla"
  if platform == "gpu":
    half = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    return "cudnn" if half and logit_softcap is None else "blockwise"
  return "xla"


def kernel_for(config, platform: str, length: int) -> str:
  """`choose_kernel` for a model config's attention setting, dtype and soft-cap."""
  return choose_kernel(config.attention, platform, config.dtype, length, config.attn_logit_softcap)


CANNOT_BRANCH = ("splash",)  # its mask is segment equality and causality by index only


def attention_mask(
  q_positions_BxT,
  q_segment_ids_BxT,
  kv_positions_BxS,
  kv_segment_ids_BxS,
  sliding_window: int | None = None,
  q_branch_ids_BxT=None,
  kv_branch_ids_BxS=None,
) -> jnp.ndarray:
  """[B, 1, T, S] boolean: same non-empty segment, causal by position, inside the window, and
  (with branch ids) the key in the trunk (branch 0) or in the query's own branch."""
  same_segment = q_segment_ids_BxT[:, :, None] == kv_segment_ids_BxS[:, None, :]
  occupied = kv_segment_ids_BxS[:, None, :] != 0
  distance_BxTxS = q_positions_BxT[:, :, None] - kv_positions_BxS[:, None, :]
  mask = same_segment & occupied & (distance_BxTxS >= 0)
  if sliding_window is not None:
    mask &= distance_BxTxS < sliding_window
  if q_branch_ids_BxT is not None:
    kv_branch = kv_branch_ids_BxS[:, None, :]
    mask &= (kv_branch == 0) | (kv_branch == q_branch_ids_BxT[:, :, None])
  return mask[:, None, :, :]


def attend(
  q_BxTxNxH,
  k_BxSxKxH,
  v_BxSxKxH,
  *,
  q_positions_BxT,
  q_segment_ids_BxT,
  kv_positions_BxS,
  kv_segment_ids_BxS,
  q_branch_ids_BxT=None,
  kv_branch_ids_BxS=None,
  sliding_window: int | None = None,
  window_on=None,
  scale: float | None = None,
  logit_softcap: float | None = None,
  kernel: str = "auto",
  mesh=None,
) -> jnp.ndarray:
  """Grouped-query attention of a whole (possibly packed) sequence; [B, T, N, H] in q's dtype.

  Scores are q·k times `scale` (default H^-1/2), soft-capped when `logit_softcap` is set. The
  window applies where the traced flag `window_on` is true (always when it is None).
  The splash and cuDNN kernels assume what holds for training rows and prompts: queries and
  keys are the same positions (in order), and inside a segment positions count up by one —
  or, with branch ids, a later branch restarts its positions where the trunk ends.
  """
  kernel = choose_kernel(kernel, platform_of(mesh), q_BxTxNxH.dtype, q_BxTxNxH.shape[1], logit_softcap)
  if q_branch_ids_BxT is not None and kernel in CANNOT_BRANCH:
    raise ValueError(
      f"the {kernel} attention kernel cannot attend within branched segments (shared-prompt pairs); "
      "pack the sides of pairs separately (pair_packing='sides') or choose another kernel"
    )
  branches = dict(q_branch_ids_BxT=q_branch_ids_BxT, kv_branch_ids_BxS=kv_branch_ids_BxS)
  scale = q_BxTxNxH.shape[-1] ** -0.5 if scale is None else scale
  if window_on is not None and sliding_window is not None:
    if kernel == "xla":  # the mask takes a traced window
      sliding_window = jnp.where(window_on, sliding_window, jnp.iinfo(jnp.int32).max)
    else:
      one = functools.partial(
        attend,
        q_BxTxNxH,
        k_BxSxKxH,
        v_BxSxKxH,
        q_positions_BxT=q_positions_BxT,
        q_segment_ids_BxT=q_segment_ids_BxT,
        kv_positions_BxS=kv_positions_BxS,
        kv_segment_ids_BxS=kv_segment_ids_BxS,
        scale=scale,
        logit_softcap=logit_softcap,
        kernel=kernel,
        mesh=mesh,
        **branches,
      )
      return jax.lax.cond(window_on, lambda: one(sliding_window=sliding_window), lambda: one(sliding_window=None))
  if kernel == "splash":
    return _splash(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, q_segment_ids_BxT, sliding_window, scale, logit_softcap, mesh)
  if kernel == "blockwise":
    return blockwise_attend(
      q_BxTxNxH,
      k_BxSxKxH,
      v_BxSxKxH,
      q_positions_BxT=q_positions_BxT,
      q_segment_ids_BxT=q_segment_ids_BxT,
      kv_positions_BxS=kv_positions_BxS,
      kv_segment_ids_BxS=kv_segment_ids_BxS,
      sliding_window=sliding_window,
      scale=scale,
      logit_softcap=logit_softcap,
      **branches,
    )
  mask = attention_mask(
    q_positions_BxT, q_segment_ids_BxT, kv_positions_BxS, kv_segment_ids_BxS, sliding_window, **branches
  )
  if logit_softcap is not None:
    return _materialized(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, scale, logit_softcap)
  # cuDNN's causal mode is exact here: queries and keys are the same positions, in order (a
  # later branch comes after the trunk and the branches before it, which the mask hides).
  causal = kernel == "cudnn"
  return jax.nn.dot_product_attention(
    q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask, scale=scale, is_causal=causal, implementation=kernel
  )


def _softcap(scores, cap: float | None):
  return scores if cap is None else cap * jnp.tanh(scores / cap)


def _materialized(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_Bx1xTxS, scale, logit_softcap):
  """Scores, soft-cap, mask, softmax and values written out: XLA attention with soft-capping."""
  batch, length, num_heads, head_dim = q_BxTxNxH.shape
  num_kv_heads = k_BxSxKxH.shape[2]
  q_BxTxKxGxH = q_BxTxNxH.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
  f32 = jnp.float32
  scores = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH, preferred_element_type=f32) * scale
  scores = jnp.where(mask_Bx1xTxS[:, :, None], _softcap(scores, logit_softcap), _MASKED)
  weights = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bkgts,bskh->btkgh", weights.astype(v_BxSxKxH.dtype), v_BxSxKxH, preferred_element_type=f32)
  return out.reshape(batch, length, num_heads, head_dim).astype(q_BxTxNxH.dtype)


# --- Splash attention (TPU) -------------------------------------------------------------------


@functools.cache
def _splash_kernel(length: int, groups: int, sliding_window: int | None, logit_softcap, interpret: bool):
  """A grouped-query splash kernel for [G, T, H] queries against one key/value head."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

  if sliding_window is None:
    one = masks.CausalMask((length, length))
  else:  # causal, and at most sliding_window - 1 positions back
    one = masks.LocalMask((length, length), window_size=(sliding_window - 1, 0), offset=0)
  # Built eagerly even when first asked for inside a trace: the cached kernel holds its mask
  # arrays, which must be constants rather than one trace's values.
  with jax.ensure_compile_time_eval():
    return splash.make_splash_mqa_single_device(
      masks.MultiHeadMask([one] * groups), attn_logits_soft_cap=logit_softcap, interpret=interpret
    )


def _splash(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, segment_ids_BxT, sliding_window, scale, logit_softcap, mesh):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

  from srit_jax import sharding

  length = q_BxTxNxH.shape[1]
  if length % SPLASH_BLOCK:
    raise ValueError(f"the splash kernel needs whole blocks of {SPLASH_BLOCK} positions, got {length}")
  interpret = platform_of(mesh) != "tpu"  # tests on CPU run the kernel in Pallas's interpreter
  scale = jnp.asarray(scale, q_BxTxNxH.dtype)

  def per_device(q, k, v, segments):
    b, t, n, h = q.shape
    kv_heads = k.shape[2]
    kernel = _splash_kernel(t, n // kv_heads, sliding_window, logit_softcap, interpret)
    q_BxKxGxTxH = (q * scale).reshape(b, t, kv_heads, n // kv_heads, h).transpose(0, 2, 3, 1, 4)
    k_BxKxTxH, v_BxKxTxH = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def one_row(q_KxGxTxH, k_KxTxH, v_KxTxH, segment_T):
      ids = splash.SegmentIds(q=segment_T, kv=segment_T)
      return jax.vmap(lambda qg, kk, vv: kernel(qg, kk, vv, segment_ids=ids))(q_KxGxTxH, k_KxTxH, v_KxTxH)

    out_BxKxGxTxH = jax.vmap(one_row)(q_BxKxGxTxH, k_BxKxTxH, v_BxKxTxH, segments)
    return out_BxKxGxTxH.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h).astype(q.dtype)

  if mesh is None:
    return per_device(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, segment_ids_BxT)
  q_spec = sharding.logical_to_spec(("batch", "length", "act_heads", "head_dim"), q_BxTxNxH.shape, mesh)
  kv_spec = sharding.logical_to_spec(("batch", "length", "act_kv_heads", "head_dim"), k_BxSxKxH.shape, mesh)
  if q_spec[2] != kv_spec[2]:  # query and key heads must split alike to keep their groups together
    q_spec = jax.sharding.PartitionSpec(q_spec[0], None, None, None)
    kv_spec = jax.sharding.PartitionSpec(kv_spec[0], None, None, None)
  segment_spec = jax.sharding.PartitionSpec(q_spec[0], None)
  return jax.shard_map(
    per_device,
    mesh=mesh,
    in_specs=(q_spec, kv_spec, kv_spec, segment_spec),
    out_specs=q_spec,
    check_vma=False,
  )(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, segment_ids_BxT)


# --- Blockwise attention (any backend) --------------------------------------------------------


def blockwise_attend(
  q_BxTxNxH,
  k_BxSxKxH,
  v_BxSxKxH,
  *,
  q_positions_BxT,
  q_segment_ids_BxT,
  kv_positions_BxS,
  kv_segment_ids_BxS,
  q_branch_ids_BxT=None,
  kv_branch_ids_BxS=None,
  sliding_window: int | None = None,
  scale: float | None = None,
  logit_softcap: float | None = None,
  block: int = 512,
) -> jnp.ndarray:
  """Attention over key blocks of `block` positions with a running (online) softmax.

  Each block's scores are recomputed in the backward pass (`jax.checkpoint`), so memory holds
  one block's scores at a time and the per-block running statistics, never [B, N, T, S].
  Scores and the running sums are float32 whatever the inputs' dtype.
  """
  batch, length, num_heads, head_dim = q_BxTxNxH.shape
  keys = k_BxSxKxH.shape[1]
  num_kv_heads = k_BxSxKxH.shape[2]
  groups = num_heads // num_kv_heads
  block = min(block, keys)
  pad = -keys % block
  if pad:  # padded keys carry segment 0: nothing attends to them
    k_BxSxKxH, v_BxSxKxH = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0))) for x in (k_BxSxKxH, v_BxSxKxH))
    kv_positions_BxS = jnp.pad(kv_positions_BxS, ((0, 0), (0, pad)))
    kv_segment_ids_BxS = jnp.pad(kv_segment_ids_BxS, ((0, 0), (0, pad)))
    if kv_branch_ids_BxS is not None:
      kv_branch_ids_BxS = jnp.pad(kv_branch_ids_BxS, ((0, 0), (0, pad)))
  if kv_branch_ids_BxS is None:  # one branch: every key is the trunk's
    kv_branch_ids_BxS = jnp.zeros_like(kv_segment_ids_BxS)
  num_blocks = (keys + pad) // block
  f32 = jnp.float32
  q_BxKxGxTxH = q_BxTxNxH.reshape(batch, length, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  q_BxKxGxTxH = q_BxKxGxTxH * jnp.asarray(head_dim**-0.5 if scale is None else scale, q_BxTxNxH.dtype)

  def blocks(x):  # [B, S, ...] -> [num_blocks, B, block, ...]
    return x.reshape(batch, num_blocks, block, *x.shape[2:]).swapaxes(0, 1)

  @jax.checkpoint
  def step(carry, kv_block):
    out_BxKxGxTxH, max_BxKxGxT, sum_BxKxGxT = carry
    k_blk, v_blk, pos_blk, seg_blk, branch_blk = kv_block
    scores = _softcap(jnp.einsum("bkgth,bskh->bkgts", q_BxKxGxTxH, k_blk, preferred_element_type=f32), logit_softcap)
    q_branch = jnp.zeros_like(q_segment_ids_BxT) if q_branch_ids_BxT is None else q_branch_ids_BxT
    mask = attention_mask(q_positions_BxT, q_segment_ids_BxT, pos_blk, seg_blk, sliding_window, q_branch, branch_blk)[
      :, :, None
    ]
    scores = jnp.where(mask, scores, _MASKED)
    new_max = jnp.maximum(max_BxKxGxT, scores.max(-1))
    correction = jnp.exp(max_BxKxGxT - new_max)
    weights = jnp.where(mask, jnp.exp(scores - new_max[..., None]), 0.0)
    values = jnp.einsum("bkgts,bskh->bkgth", weights.astype(v_blk.dtype), v_blk, preferred_element_type=f32)
    out = out_BxKxGxTxH * correction[..., None] + values
    return (out, new_max, sum_BxKxGxT * correction + weights.sum(-1)), None

  init = (
    jnp.zeros((batch, num_kv_heads, groups, length, head_dim), f32),
    jnp.full((batch, num_kv_heads, groups, length), _MASKED, f32),
    jnp.zeros((batch, num_kv_heads, groups, length), f32),
  )
  xs = (
    blocks(k_BxSxKxH),
    blocks(v_BxSxKxH),
    blocks(kv_positions_BxS),
    blocks(kv_segment_ids_BxS),
    blocks(kv_branch_ids_BxS),
  )
  (out, _, total), _ = jax.lax.scan(step, init, xs)
  out = out / jnp.maximum(total, 1e-30)[..., None]  # a query that sees no key (padding) gives 0
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, num_heads, head_dim).astype(q_BxTxNxH.dtype)


# --- Decoding against a KV cache --------------------------------------------------------------


def attend_cached(
  q_BxTxNxH,
  keys_BxKxHxS,
  values_BxKxSxH,
  *,
  q_positions_BxT,
  q_segment_ids_BxT,
  cache_positions_BxS,
  cache_segment_ids_BxS,
  sliding_window: int | None = None,
  window_on=None,
  scale: float | None = None,
  logit_softcap: float | None = None,
) -> jnp.ndarray:
  """Attention of T new queries over a KV cache that already holds their own keys and values.

  The decode path. Keys lie as [B, K, H, S] and values as [B, K, S, H], so both matmuls read
  the cache where it lies; each query head group is handled against its key/value head
  without repeating the cache. Returns [B, T, N, H] in the dtype of the queries.
  """
  batch, length, num_heads, head_dim = q_BxTxNxH.shape
  num_kv_heads = keys_BxKxHxS.shape[1]
  groups = num_heads // num_kv_heads
  q_BxKxGxTxH = q_BxTxNxH.reshape(batch, length, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
  q_BxKxGxTxH = q_BxKxGxTxH * jnp.asarray(head_dim**-0.5 if scale is None else scale, q_BxTxNxH.dtype)
  if window_on is not None and sliding_window is not None:
    sliding_window = jnp.where(window_on, sliding_window, jnp.iinfo(jnp.int32).max)
  f32 = jnp.float32
  scores = jnp.einsum("bkgth,bkhs->bkgts", q_BxKxGxTxH, keys_BxKxHxS, preferred_element_type=f32)
  scores = _softcap(scores, logit_softcap)
  mask = attention_mask(q_positions_BxT, q_segment_ids_BxT, cache_positions_BxS, cache_segment_ids_BxS, sliding_window)
  weights = jax.nn.softmax(jnp.where(mask[:, :, None], scores, _MASKED), axis=-1)
  out = jnp.einsum(
    "bkgts,bksh->bkgth", weights.astype(values_BxKxSxH.dtype), values_BxKxSxH, preferred_element_type=f32
  )
  return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, num_heads, head_dim).astype(q_BxTxNxH.dtype)
