"""The decoder in Flax linen, its layers able to read and write a KV cache (kv_cache.py); generation
runs it against the cache through decoding.py.

One module covers Llama 2/3.x, Mistral, Qwen2/2.5/3, Phi-3, Gemma 2/3, SmolLM2 and TinyLlama:
each way a family differs is a `ModelConfig` switch (see there). Layers run under `nn.scan`
so compile time does not grow with depth; where layers differ (Gemma's sliding and global
layers) the scan carries a per-layer flag. Rows may be packed: `segment_ids` (0 = padding)
keep segments from attending to each other and `positions` restart inside each segment;
optional `branch_ids` split a segment into a shared trunk (0) and branches that see the trunk
and themselves only (a preference pair's prompt, computed once, and its two answers).

Shapes: B batch, T length, S cache length, D embed, N query heads, K key/value heads,
H head dim, F MLP hidden, V vocab, L layers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh

from srit_jax import sharding
from srit_jax.model import attention, kv_cache, rotary
from srit_jax.model.config import ModelConfig
from srit_jax.model.lora import Projection, _kernel_init, _param

_REMAT_POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class RMSNorm(nn.Module):
  """Over the last axis, in float32; times the weight (Llama) or (offset + weight) (Gemma)."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    init = nn.initializers.zeros if cfg.norm_weight_offset == 1.0 else nn.initializers.ones  # a unit scale at start
    scale = self.param("scale", _param(init, "norm"), (x.shape[-1],), cfg.base_param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + cfg.rms_norm_eps)
    if cfg.norm_weight_offset:  # Gemma multiplies in float32, then casts
      return (normed * (cfg.norm_weight_offset + scale.astype(jnp.float32))).astype(cfg.dtype)
    return normed.astype(cfg.dtype) * scale.astype(cfg.dtype)


def softcap(x, cap: float | None):
  """cap * tanh(x / cap) in float32, in x's dtype; x itself without a cap."""
  if cap is None:
    return x
  return (cap * jnp.tanh(x.astype(jnp.float32) / cap)).astype(x.dtype)


def _rotary_frequencies(cfg: ModelConfig, is_sliding):
  """The layer's inverse frequencies: Gemma 3's sliding layers have their own unscaled base."""
  global_ = rotary.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  if cfg.local_rope_theta is None:
    return global_
  local = rotary.inverse_frequencies(cfg.head_dim, cfg.local_rope_theta, None)
  if isinstance(is_sliding, bool):
    return local if is_sliding else global_
  return jnp.where(is_sliding, local, global_)


class Attention(nn.Module):
  config: ModelConfig
  mesh: Mesh | None = None

  @nn.compact
  def __call__(
    self, x_BxTxD, positions_BxT, segment_ids_BxT, branch_ids_BxT, layer_kv, cache_view, is_sliding, deterministic=True
  ):
    """`is_sliding`: whether this layer attends within the window — a Python bool, or a traced
    flag under the layer scan when layers differ. `branch_ids_BxT`: None, or branches within
    segments (full-sequence attention only)."""
    cfg = self.config

    def projection(target, heads, heads_axis):
      return Projection(
        cfg,
        target,
        features=(heads, cfg.head_dim),
        num_inputs=1,
        axes=("embed", heads_axis, "head_dim"),
        use_bias=cfg.qkv_bias,
        name=f"{target}_proj",
      )(x_BxTxD, deterministic)

    q_BxTxNxH = projection("q", cfg.num_heads, "q_heads")
    k_BxTxKxH = projection("k", cfg.num_kv_heads, "kv_heads")
    v_BxTxKxH = projection("v", cfg.num_kv_heads, "kv_heads")
    if cfg.qk_norm:
      q_BxTxNxH = RMSNorm(cfg, name="q_norm")(q_BxTxNxH)
      k_BxTxKxH = RMSNorm(cfg, name="k_norm")(k_BxTxKxH)
    inv_freq = _rotary_frequencies(cfg, is_sliding)
    q_BxTxNxH = rotary.apply_rotary(q_BxTxNxH, positions_BxT, inv_freq)
    k_BxTxKxH = rotary.apply_rotary(k_BxTxKxH, positions_BxT, inv_freq)
    # A static layer gets its window or none; a traced flag switches the window on per layer.
    traced = not isinstance(is_sliding, bool)
    window = cfg.sliding_window if traced or is_sliding else None
    how = dict(
      sliding_window=window,
      window_on=is_sliding if traced else None,
      scale=cfg.query_scale,
      logit_softcap=cfg.attn_logit_softcap,
    )
    q_BxTxNxH = sharding.constrain(q_BxTxNxH, ("batch", "length", "act_heads", "head_dim"), self.mesh)

    if cache_view is None or cache_view.mode == "prefill":
      # Only this call's keys and values go back, as [B, T, K, H]; the caller writes them in.
      new_kv = None if cache_view is None else (k_BxTxKxH, v_BxTxKxH)
      out_BxTxNxH = attention.attend(
        q_BxTxNxH,
        k_BxTxKxH,
        v_BxTxKxH,
        q_positions_BxT=positions_BxT,
        q_segment_ids_BxT=segment_ids_BxT,
        kv_positions_BxS=positions_BxT,
        kv_segment_ids_BxS=segment_ids_BxT,
        q_branch_ids_BxT=branch_ids_BxT,
        kv_branch_ids_BxS=branch_ids_BxT,
        kernel=cfg.attention,
        mesh=self.mesh,
        **how,
      )
    else:
      # Written before they are read, so the update happens in place: the attention reads
      # the array the write produced, never the one it replaced.
      keys_BxKxHxS = kv_cache.write_keys(layer_kv[0], k_BxTxKxH, cache_view.end, self.mesh)
      values_BxKxSxH = kv_cache.write_values(layer_kv[1], v_BxTxKxH, cache_view.end, self.mesh)
      new_kv = (keys_BxKxHxS, values_BxKxSxH)
      out_BxTxNxH = attention.attend_cached(
        q_BxTxNxH,
        keys_BxKxHxS.astype(cfg.dtype),
        values_BxKxSxH.astype(cfg.dtype),
        q_positions_BxT=positions_BxT,
        q_segment_ids_BxT=segment_ids_BxT,
        cache_positions_BxS=cache_view.positions,
        cache_segment_ids_BxS=cache_view.segment_ids,
        **how,
      )
    out_BxTxD = Projection(
      cfg, "o", features=(cfg.embed_dim,), num_inputs=2, axes=("q_heads", "head_dim", "embed"), name="o_proj"
    )(out_BxTxNxH, deterministic)
    return out_BxTxD, new_kv


class MLP(nn.Module):
  config: ModelConfig
  mesh: Mesh | None = None

  @nn.compact
  def __call__(self, x_BxTxD, deterministic=True):
    cfg = self.config

    def dense(target, features, axes, x):
      return Projection(cfg, target, features=(features,), num_inputs=1, axes=axes, name=f"{target}_proj")(
        x, deterministic
      )

    activation = nn.silu if cfg.hidden_activation == "silu" else functools.partial(nn.gelu, approximate=True)
    gate_BxTxF = dense("gate", cfg.mlp_dim, ("embed", "mlp"), x_BxTxD)
    up_BxTxF = dense("up", cfg.mlp_dim, ("embed", "mlp"), x_BxTxD)
    hidden_BxTxF = sharding.constrain(activation(gate_BxTxF) * up_BxTxF, ("batch", "length", "act_mlp"), self.mesh)
    return dense("down", cfg.embed_dim, ("mlp", "embed"), hidden_BxTxF)


class DecoderBlock(nn.Module):
  """Pre-norm attention and gated MLP, each with a residual; the body of the layer scan.

  With sandwich norms (Gemma 2/3) each block's output is normed too before its residual:
  then `post_attention_norm` norms the attention output (as Gemma's post_attention_layernorm
  does) and `pre_mlp_norm` the MLP input; otherwise `post_attention_norm` is the MLP's input
  norm (Llama's post_attention_layernorm).
  """

  config: ModelConfig
  mesh: Mesh | None = None

  @nn.compact
  def __call__(
    self, x_BxTxD, positions_BxT, segment_ids_BxT, branch_ids_BxT, layer_kv, cache_view, is_sliding, deterministic=True
  ):
    cfg = self.config
    if is_sliding is None:  # every layer alike
      is_sliding = cfg.is_sliding(0)
    x_BxTxD = sharding.constrain(x_BxTxD, ("batch", "length", "act_embed"), self.mesh)
    attn_out, new_kv = Attention(cfg, self.mesh, name="attention")(
      RMSNorm(cfg, name="input_norm")(x_BxTxD),
      positions_BxT,
      segment_ids_BxT,
      branch_ids_BxT,
      layer_kv,
      cache_view,
      is_sliding,
      deterministic,
    )
    mlp = MLP(cfg, self.mesh, name="mlp")
    if cfg.sandwich_norms:
      x_BxTxD = x_BxTxD + RMSNorm(cfg, name="post_attention_norm")(attn_out)
      mlp_out = mlp(RMSNorm(cfg, name="pre_mlp_norm")(x_BxTxD), deterministic)
      return x_BxTxD + RMSNorm(cfg, name="post_mlp_norm")(mlp_out), new_kv
    x_BxTxD = x_BxTxD + attn_out
    return x_BxTxD + mlp(RMSNorm(cfg, name="post_attention_norm")(x_BxTxD), deterministic), new_kv


class Transformer(nn.Module):
  """Token ids in, logits out. decoding.py's `prefill` and `decode` run it against a `KVCache`."""

  config: ModelConfig
  mesh: Mesh | None = None

  def setup(self):
    cfg = self.config
    self.embedder = nn.Embed(
      num_embeddings=cfg.vocab_size,
      features=cfg.embed_dim,
      dtype=cfg.dtype,
      param_dtype=cfg.base_param_dtype,
      embedding_init=_param(nn.initializers.normal(stddev=0.02), "vocab", "embed"),
    )
    block = DecoderBlock
    if cfg.remat_policy != "none":
      block = nn.remat(block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
    self.layers = nn.scan(
      block,
      variable_axes={"params": 0, "lora": 0},
      split_rngs={"params": True, "dropout": True},
      # positions, segment ids, branch ids, per-layer cache, cache view, per-layer sliding flag, deterministic
      in_axes=(
        nn.broadcast,
        nn.broadcast,
        nn.broadcast,
        0,
        nn.broadcast,
        0 if cfg.mixed_layers else nn.broadcast,
        nn.broadcast,
      ),
      length=cfg.num_layers,
      unroll=cfg.scan_unroll,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, self.mesh)
    self.final_norm = RMSNorm(cfg)
    if not cfg.tie_embeddings:
      self.lm_head = nn.DenseGeneral(
        features=cfg.vocab_size,
        use_bias=False,
        dtype=cfg.dtype,
        param_dtype=cfg.base_param_dtype,
        kernel_init=_param(_kernel_init, "embed", "vocab"),
      )

  def __call__(self, tokens_BxT, positions_BxT=None, segment_ids_BxT=None):
    """Logits [B, T, V] of a full (possibly packed) sequence, in the compute dtype."""
    return self.logits_from_hidden(self.hidden_states(tokens_BxT, positions_BxT, segment_ids_BxT))

  def hidden_states(
    self, tokens_BxT, positions_BxT=None, segment_ids_BxT=None, deterministic=True, branch_ids_BxT=None
  ):
    """Final-normed hidden states [B, T, D], for losses that project to the vocabulary in chunks.

    `deterministic=False` applies adapter dropout (it needs a "dropout" rng). `branch_ids_BxT`:
    a shared trunk (0) and branches inside segments (see the module docstring).
    """
    if segment_ids_BxT is None:
      segment_ids_BxT = jnp.ones_like(tokens_BxT, jnp.int32)
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32), tokens_BxT.shape)
    hidden, _ = self._backbone(tokens_BxT, positions_BxT, segment_ids_BxT, None, None, deterministic, branch_ids_BxT)
    return hidden

  def prefill_kv(self, tokens_BxT, positions_BxT, segment_ids_BxT):
    """Runs a prompt; returns (logits of the last position [B, V], (keys, values) [L, B, T, K, H])."""
    view = kv_cache.CacheView(positions_BxT, segment_ids_BxT, jnp.zeros((), jnp.int32), mode="prefill")
    hidden, new_kv = self._backbone(tokens_BxT, positions_BxT, segment_ids_BxT, None, view)
    return self.logits_from_hidden(hidden[:, -1]), new_kv

  def embed(self, tokens_BxT):
    x_BxTxD = self.embedder(tokens_BxT)
    if self.config.scale_embeddings:  # Gemma: by sqrt(D) rounded to the compute dtype
      x_BxTxD = x_BxTxD * jnp.asarray(self.config.embed_dim**0.5, self.config.dtype)
    return x_BxTxD

  def head(self, x_BxTxD):
    """Logits from the last layer's output: the final norm, then the projection to the vocabulary."""
    return self.logits_from_hidden(self.final_norm(x_BxTxD))

  def logits_from_hidden(self, hidden_BxTxD):
    if self.config.tie_embeddings:
      logits = self.embedder.attend(hidden_BxTxD)
    else:
      logits = self.lm_head(hidden_BxTxD)
    axes = ("batch", "length", "act_vocab") if logits.ndim == 3 else ("batch", "act_vocab")
    return sharding.constrain(softcap(logits, self.config.final_logit_softcap), axes, self.mesh)

  def _backbone(
    self, tokens_BxT, positions_BxT, segment_ids_BxT, kv, cache_view, deterministic=True, branch_ids_BxT=None
  ):
    cfg = self.config
    is_sliding_L = jnp.asarray([cfg.is_sliding(i) for i in range(cfg.num_layers)]) if cfg.mixed_layers else None
    x_BxTxD = self.embed(tokens_BxT)
    x_BxTxD, new_kv = self.layers(
      x_BxTxD, positions_BxT, segment_ids_BxT, branch_ids_BxT, kv, cache_view, is_sliding_L, deterministic
    )
    return self.final_norm(x_BxTxD), new_kv


def variables(params, adapters=None) -> dict:
  """The variables of `Transformer.apply`: the (base) parameters, and LoRA adapters if any."""
  return {"params": params} if adapters is None else {"params": params, "lora": adapters}


def trained_variables(trainable, base=None) -> dict:
  """The variables of a model being trained: the trained tree alone (full fine-tuning), or the
  frozen `base` with the trained tree as its LoRA adapters."""
  return variables(trainable) if base is None else variables(base, trainable)


@functools.cache
def _boxed_variables(config: ModelConfig) -> dict:
  model = Transformer(config)
  tokens = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), tokens)


def boxed_param_shapes(config: ModelConfig):
  """The (base) parameter tree as `nn.Partitioned` shape/dtype leaves, without allocating anything.

  Cached per (hashable, frozen) config; callers must not mutate the returned tree.
  """
  return _boxed_variables(config)["params"]


def boxed_adapter_shapes(config: ModelConfig):
  """The LoRA adapter tree ("lora" collection) as `nn.Partitioned` leaves; empty without adapters."""
  return _boxed_variables(config).get("lora", {})


def _init(config: ModelConfig, rng: jax.Array, mesh: Mesh | None, collection: str):
  model = Transformer(config)
  tokens = jnp.zeros((1, 1), jnp.int32)

  def init(rng):
    return nn.unbox(model.init(rng, tokens)[collection])

  if mesh is None:
    return jax.jit(init)(rng)
  shardings = sharding.tree_shardings(_boxed_variables(config)[collection], mesh)
  return jax.jit(init, out_shardings=shardings)(rng)


def init_params(config: ModelConfig, rng: jax.Array, mesh: Mesh | None = None):
  """Randomly initialised parameters, created directly in their shardings when a mesh is given."""
  return _init(config, rng, mesh, "params")


def init_adapters(config: ModelConfig, rng: jax.Array, mesh: Mesh | None = None):
  """Fresh LoRA adapters (B = 0: the adapted model is the base), in their shardings."""
  return _init(config, rng, mesh, "lora")


@functools.partial(jax.jit, static_argnames=("config", "mesh"))
def forward(
  config: ModelConfig, params, tokens_BxT, positions_BxT=None, segment_ids_BxT=None, mesh=None, adapters=None
):
  """Jitted logits of a batch; `config` and `mesh` are static."""
  return Transformer(config, mesh).apply(variables(params, adapters), tokens_BxT, positions_BxT, segment_ids_BxT)
