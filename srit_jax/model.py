"""The Llama-family decoder in Flax linen, with a KV-cache path for generation.

One module covers Llama 2/3.x, Mistral, Qwen2/2.5, SmolLM2 and TinyLlama (see `ModelConfig`).
Layers run under `nn.scan` so compile time does not grow with depth. Rows may be packed:
`segment_ids` (0 = padding) keep segments from attending to each other and `positions`
restart inside each segment.

Shapes: B batch, T length, S cache length, D embed, N query heads, K key/value heads,
H head dim, F MLP hidden, V vocab, L layers.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import Mesh

from srit_jax import attention, rotary, sharding
from srit_jax.model_config import ModelConfig

_REMAT_POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


@flax.struct.dataclass
class KVCache:
  """Preallocated keys and values of every layer, and what each slot holds.

  keys, values: [L, B, K, S, H] (heads before slots, so each step's attention reads them
  as they lie); positions, segment_ids: [B, S] (segment 0 = empty slot); end: int32 scalar,
  the number of slots written so far (shared by all rows).
  """

  keys: jax.Array
  values: jax.Array
  positions: jax.Array
  segment_ids: jax.Array
  end: jax.Array


CACHE_AXES = ("layers", "batch", "act_kv_heads", "length", "head_dim")


@flax.struct.dataclass
class CacheView:
  """What every layer sees of the cache: slot contents and how to attend.

  mode "prefill": attend among the new tokens only (the cache must be empty) and hand back
  their keys and values; mode "step": attend over the cache plus the new tokens.
  """

  positions: jax.Array  # [B, S], before this call's tokens are written
  segment_ids: jax.Array  # [B, S]
  mode: str = flax.struct.field(pytree_node=False, default="step")


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype=None) -> KVCache:
  dtype = dtype or config.dtype
  kv_shape = (config.num_layers, batch_size, config.num_kv_heads, max_length, config.head_dim)
  return KVCache(
    keys=jnp.zeros(kv_shape, dtype),
    values=jnp.zeros(kv_shape, dtype),
    positions=jnp.zeros((batch_size, max_length), jnp.int32),
    segment_ids=jnp.zeros((batch_size, max_length), jnp.int32),
    end=jnp.zeros((), jnp.int32),
  )


def _param(init, *axes):
  return nn.with_logical_partitioning(init, axes)


_kernel_init = nn.initializers.normal(stddev=0.02)


class RMSNorm(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", _param(nn.initializers.ones, "norm"), (x.shape[-1],), self.config.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.config.rms_norm_eps)
    return normed.astype(self.config.dtype) * scale.astype(self.config.dtype)


class Attention(nn.Module):
  config: ModelConfig
  mesh: Mesh | None = None

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT, layer_kv, cache_view):
    cfg = self.config

    def projection(name, heads, heads_axis):
      return nn.DenseGeneral(
        features=(heads, cfg.head_dim),
        use_bias=cfg.qkv_bias,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_param(_kernel_init, "embed", heads_axis, "head_dim"),
        bias_init=_param(nn.initializers.zeros, heads_axis, "head_dim"),
        name=name,
      )(x_BxTxD)

    inv_freq = rotary.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    q_BxTxNxH = rotary.apply_rotary(projection("q_proj", cfg.num_heads, "q_heads"), positions_BxT, inv_freq)
    k_BxTxKxH = rotary.apply_rotary(projection("k_proj", cfg.num_kv_heads, "kv_heads"), positions_BxT, inv_freq)
    v_BxTxKxH = projection("v_proj", cfg.num_kv_heads, "kv_heads")
    q_BxTxNxH = sharding.constrain(q_BxTxNxH, ("batch", "length", "act_heads", "head_dim"), self.mesh)

    if cache_view is None or cache_view.mode == "prefill":
      out_BxTxNxH = attention.attend(
        q_BxTxNxH,
        k_BxTxKxH,
        v_BxTxKxH,
        q_positions_BxT=positions_BxT,
        q_segment_ids_BxT=segment_ids_BxT,
        kv_positions_BxS=positions_BxT,
        kv_segment_ids_BxS=segment_ids_BxT,
        sliding_window=cfg.sliding_window,
      )
    else:
      cached_keys, cached_values = layer_kv
      out_BxTxNxH = attention.attend_cached(
        q_BxTxNxH,
        cached_keys.astype(cfg.dtype),
        cached_values.astype(cfg.dtype),
        k_BxTxKxH,
        v_BxTxKxH,
        q_positions_BxT=positions_BxT,
        q_segment_ids_BxT=segment_ids_BxT,
        cache_positions_BxS=cache_view.positions,
        cache_segment_ids_BxS=cache_view.segment_ids,
        sliding_window=cfg.sliding_window,
      )
    # Only this call's keys and values go back, as [B, K, T, H]; the caller writes them in.
    new_kv = None if cache_view is None else (k_BxTxKxH.transpose(0, 2, 1, 3), v_BxTxKxH.transpose(0, 2, 1, 3))
    out_BxTxD = nn.DenseGeneral(
      features=cfg.embed_dim,
      axis=(-2, -1),
      use_bias=False,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      kernel_init=_param(_kernel_init, "q_heads", "head_dim", "embed"),
      name="o_proj",
    )(out_BxTxNxH)
    return out_BxTxD, new_kv


class MLP(nn.Module):
  config: ModelConfig
  mesh: Mesh | None = None

  @nn.compact
  def __call__(self, x_BxTxD):
    cfg = self.config

    def dense(name, features, axes):
      return nn.DenseGeneral(
        features=features,
        use_bias=False,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_param(_kernel_init, *axes),
        name=name,
      )

    gate_BxTxF = dense("gate_proj", cfg.mlp_dim, ("embed", "mlp"))(x_BxTxD)
    up_BxTxF = dense("up_proj", cfg.mlp_dim, ("embed", "mlp"))(x_BxTxD)
    hidden_BxTxF = sharding.constrain(nn.silu(gate_BxTxF) * up_BxTxF, ("batch", "length", "act_mlp"), self.mesh)
    return dense("down_proj", cfg.embed_dim, ("mlp", "embed"))(hidden_BxTxF)


class DecoderBlock(nn.Module):
  """Pre-norm attention and SwiGLU MLP, each with a residual; the body of the layer scan."""

  config: ModelConfig
  mesh: Mesh | None = None

  @nn.compact
  def __call__(self, x_BxTxD, positions_BxT, segment_ids_BxT, layer_kv, cache_view):
    x_BxTxD = sharding.constrain(x_BxTxD, ("batch", "length", "act_embed"), self.mesh)
    attn_out, new_kv = Attention(self.config, self.mesh, name="attention")(
      RMSNorm(self.config, name="input_norm")(x_BxTxD), positions_BxT, segment_ids_BxT, layer_kv, cache_view
    )
    x_BxTxD = x_BxTxD + attn_out
    x_BxTxD = x_BxTxD + MLP(self.config, self.mesh, name="mlp")(
      RMSNorm(self.config, name="post_attention_norm")(x_BxTxD)
    )
    return x_BxTxD, new_kv


class Transformer(nn.Module):
  """Token ids in, logits out. `decode` runs the same network against a `KVCache`."""

  config: ModelConfig
  mesh: Mesh | None = None

  def setup(self):
    cfg = self.config
    self.embedder = nn.Embed(
      num_embeddings=cfg.vocab_size,
      features=cfg.embed_dim,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      embedding_init=_param(nn.initializers.normal(stddev=0.02), "vocab", "embed"),
    )
    block = DecoderBlock
    if cfg.remat_policy != "none":
      block = nn.remat(block, policy=_REMAT_POLICIES[cfg.remat_policy], prevent_cse=False)
    self.layers = nn.scan(
      block,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
      length=cfg.num_layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )(cfg, self.mesh)
    self.final_norm = RMSNorm(cfg)
    if not cfg.tie_embeddings:
      self.lm_head = nn.DenseGeneral(
        features=cfg.vocab_size,
        use_bias=False,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=_param(_kernel_init, "embed", "vocab"),
      )

  def __call__(self, tokens_BxT, positions_BxT=None, segment_ids_BxT=None):
    """Logits [B, T, V] of a full (possibly packed) sequence, in the compute dtype."""
    return self.logits_from_hidden(self.hidden_states(tokens_BxT, positions_BxT, segment_ids_BxT))

  def hidden_states(self, tokens_BxT, positions_BxT=None, segment_ids_BxT=None):
    """Final-normed hidden states [B, T, D], for losses that project to the vocabulary in chunks."""
    if segment_ids_BxT is None:
      segment_ids_BxT = jnp.ones_like(tokens_BxT, jnp.int32)
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1], dtype=jnp.int32), tokens_BxT.shape)
    hidden, _ = self._backbone(tokens_BxT, positions_BxT, segment_ids_BxT, None, None)
    return hidden

  def prefill(self, tokens_BxT, positions_BxT, segment_ids_BxT, cache: KVCache):
    """Runs a prompt into an empty cache; returns (logits of the last position [B, V], cache)."""
    view = CacheView(cache.positions, cache.segment_ids, mode="prefill")
    hidden, new_kv = self._backbone(tokens_BxT, positions_BxT, segment_ids_BxT, None, view)
    cache = _write(cache, new_kv, positions_BxT, segment_ids_BxT, self.mesh)
    return self.logits_from_hidden(hidden[:, -1]), cache

  def decode(self, tokens_BxT, positions_BxT, segment_ids_BxT, cache: KVCache):
    """Runs T new tokens against the cache (a step or a chunk); returns (logits [B, T, V], cache)."""
    view = CacheView(cache.positions, cache.segment_ids, mode="step")
    hidden, new_kv = self._backbone(tokens_BxT, positions_BxT, segment_ids_BxT, (cache.keys, cache.values), view)
    cache = _write(cache, new_kv, positions_BxT, segment_ids_BxT, self.mesh)
    return self.logits_from_hidden(hidden), cache

  def logits_from_hidden(self, hidden_BxTxD):
    if self.config.tie_embeddings:
      logits = self.embedder.attend(hidden_BxTxD)
    else:
      logits = self.lm_head(hidden_BxTxD)
    axes = ("batch", "length", "act_vocab") if logits.ndim == 3 else ("batch", "act_vocab")
    return sharding.constrain(logits, axes, self.mesh)

  def _backbone(self, tokens_BxT, positions_BxT, segment_ids_BxT, kv, cache_view):
    x_BxTxD = self.embedder(tokens_BxT)
    x_BxTxD, new_kv = self.layers(x_BxTxD, positions_BxT, segment_ids_BxT, kv, cache_view)
    return self.final_norm(x_BxTxD), new_kv


def _write(cache: KVCache, new_kv, positions_BxT, segment_ids_BxT, mesh) -> KVCache:
  """Writes new keys/values ([L, B, K, T, H]) and their slot metadata at slots [end, end + T)."""
  new_keys, new_values = new_kv
  at = (0, 0, 0, cache.end, 0)
  keys = jax.lax.dynamic_update_slice(cache.keys, new_keys.astype(cache.keys.dtype), at)
  values = jax.lax.dynamic_update_slice(cache.values, new_values.astype(cache.values.dtype), at)
  return KVCache(
    keys=sharding.constrain(keys, CACHE_AXES, mesh),
    values=sharding.constrain(values, CACHE_AXES, mesh),
    positions=jax.lax.dynamic_update_slice(cache.positions, positions_BxT.astype(jnp.int32), (0, cache.end)),
    segment_ids=jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids_BxT.astype(jnp.int32), (0, cache.end)),
    end=cache.end + positions_BxT.shape[1],
  )


@functools.cache
def boxed_param_shapes(config: ModelConfig):
  """The parameter tree as `nn.Partitioned` shape/dtype leaves, without allocating anything.

  Cached per (hashable, frozen) config; callers must not mutate the returned tree.
  """
  model = Transformer(config)
  tokens = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]


def init_params(config: ModelConfig, rng: jax.Array, mesh: Mesh | None = None):
  """Randomly initialised parameters, created directly in their shardings when a mesh is given."""
  model = Transformer(config)
  tokens = jnp.zeros((1, 1), jnp.int32)

  def init(rng):
    return nn.unbox(model.init(rng, tokens)["params"])

  if mesh is None:
    return jax.jit(init)(rng)
  shardings = sharding.tree_shardings(boxed_param_shapes(config), mesh)
  return jax.jit(init, out_shardings=shardings)(rng)


@functools.partial(jax.jit, static_argnames=("config", "mesh"))
def forward(config: ModelConfig, params, tokens_BxT, positions_BxT=None, segment_ids_BxT=None, mesh=None):
  """Jitted logits of a batch; `config` and `mesh` are static."""
  return Transformer(config, mesh).apply({"params": params}, tokens_BxT, positions_BxT, segment_ids_BxT)
