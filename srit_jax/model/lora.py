"""Projections of the decoder, with optional low-rank adapters and an optionally quantized base.

`Projection` is every linear map of an attention or MLP block (q, k, v, o, gate, up, down):
y = x·W (+ bias), plus (alpha / rank)·(x·A)·B when the model config asks for LoRA on it. The
base W lives in the "params" collection, stored as is or quantized (QLoRA: int8 or NF4 with
one absmax scale per block of `quantization_block` inputs, dequantized inside the matmul);
the adapters A [in..., r] and B [r, out...] live in the "lora" collection, so the frozen base
and the trainable adapters are separate trees. B starts at zero: at step 0 the adapted model
is the base. A and B carry the logical axes of the base's input and output dimensions, so
they shard like their base matrix.

Quantization keeps the base's shape and logical axes: int8 codes have the kernel's shape;
NF4 codes pack two per byte along the last output dimension. Scales have one entry per block
of the last input dimension.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from srit_jax.model.config import ModelConfig

# The 16 levels of the 4-bit NormalFloat data type (QLoRA, Dettmers et al. 2023): quantiles of
# a standard normal scaled to [-1, 1], with an exact zero.
NF4_LEVELS = np.asarray(
  [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
  ],
  np.float32,
)  # fmt: skip

# The largest error of one element, as a fraction of its block's absmax: half a step.
MAX_RELATIVE_ERROR = {"int8": 0.5 / 127, "nf4": float(np.max(np.diff(NF4_LEVELS))) / 2}


def block_size(length: int, wanted: int) -> int:
  """The largest divisor of `length` that is at most `wanted`: scales cover whole blocks."""
  return max(d for d in range(1, min(length, wanted) + 1) if length % d == 0)


def quantize(kernel: jax.Array, kind: str, block: int, num_inputs: int) -> tuple[jax.Array, jax.Array]:
  """(codes, scales) of a kernel [in..., out...] whose first `num_inputs` dims are inputs.

  Blocks run along the last input dimension; each (block, output) pair has one absmax scale.
  """
  shape = kernel.shape
  last_in = shape[num_inputs - 1]
  size = block_size(last_in, block)
  blocks = kernel.astype(jnp.float32).reshape(*shape[: num_inputs - 1], last_in // size, size, *shape[num_inputs:])
  absmax = jnp.max(jnp.abs(blocks), axis=num_inputs, keepdims=True)
  safe = jnp.where(absmax == 0, 1.0, absmax)
  normalized = (blocks / safe).reshape(shape)
  scales = absmax.squeeze(num_inputs)
  if kind == "int8":
    return jnp.clip(jnp.round(normalized * 127), -127, 127).astype(jnp.int8), scales
  if kind == "nf4":
    codes = jnp.argmin(jnp.abs(normalized[..., None] - jnp.asarray(NF4_LEVELS)), axis=-1).astype(jnp.uint8)
    pairs = codes.reshape(*shape[:-1], shape[-1] // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(jnp.uint8), scales
  raise ValueError(f"base_quantization {kind!r} is not int8 or nf4")


def dequantize(codes: jax.Array, scales: jax.Array, kind: str, num_inputs: int, dtype) -> jax.Array:
  """The kernel of `quantize`'s (codes, scales), in `dtype`."""
  if kind == "nf4":
    unpacked = jnp.stack([codes & 0xF, codes >> 4], axis=-1).reshape(*codes.shape[:-1], codes.shape[-1] * 2)
    normalized = jnp.asarray(NF4_LEVELS)[unpacked]
  else:
    normalized = codes.astype(jnp.float32) / 127
  shape = normalized.shape
  last_in = shape[num_inputs - 1]
  num_blocks = scales.shape[num_inputs - 1]
  blocks = normalized.reshape(*shape[: num_inputs - 1], num_blocks, last_in // num_blocks, *shape[num_inputs:])
  return (blocks * jnp.expand_dims(scales, num_inputs)).reshape(shape).astype(dtype)


def quantized_shapes(kernel_shape: tuple[int, ...], kind: str, block: int, num_inputs: int):
  """(codes shape, codes dtype, scales shape) of a kernel of `kernel_shape`."""
  last_in = kernel_shape[num_inputs - 1]
  scales = (*kernel_shape[: num_inputs - 1], last_in // block_size(last_in, block), *kernel_shape[num_inputs:])
  if kind == "nf4":
    if kernel_shape[-1] % 2:
      raise ValueError(f"NF4 packs two codes per byte: the last dimension of {kernel_shape} must be even")
    return (*kernel_shape[:-1], kernel_shape[-1] // 2), jnp.uint8, scales
  return kernel_shape, jnp.int8, scales


def _param(init, *axes):
  return nn.with_logical_partitioning(init, axes)


_kernel_init = nn.initializers.normal(stddev=0.02)


def _lora_a_init(key, shape, dtype):
  """PEFT's default: Kaiming-uniform with a = sqrt(5), i.e. uniform within 1/sqrt(fan_in)."""
  fan_in = math.prod(shape[:-1])
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0) / math.sqrt(fan_in)


class Projection(nn.Module):
  """x [..., in...] → [..., out...]: the base kernel, an optional bias, optional LoRA adapters.

  `target` is the projection's short name (q, k, v, o, gate, up, down); `axes` are the
  logical names of the kernel's input then output dimensions.
  """

  config: ModelConfig
  target: str
  features: tuple[int, ...]
  num_inputs: int
  axes: tuple[str, ...]
  use_bias: bool = False

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    cfg = self.config
    in_shape = x.shape[x.ndim - self.num_inputs :]
    kernel_shape = (*in_shape, *self.features)
    if cfg.base_quantization == "none":
      kernel = self.param("kernel", _param(_kernel_init, *self.axes), kernel_shape, cfg.base_param_dtype)
    else:
      codes_shape, codes_dtype, scales_shape = quantized_shapes(
        kernel_shape, cfg.base_quantization, cfg.quantization_block, self.num_inputs
      )
      codes = self.param("kernel_codes", _param(nn.initializers.zeros, *self.axes), codes_shape, codes_dtype)
      scales = self.param("kernel_scales", _param(nn.initializers.ones, *self.axes), scales_shape, jnp.float32)
      kernel = dequantize(codes, scales, cfg.base_quantization, self.num_inputs, cfg.dtype)
    contract = tuple(range(x.ndim - self.num_inputs, x.ndim))
    y = jax.lax.dot_general(
      x.astype(cfg.dtype), kernel.astype(cfg.dtype), ((contract, tuple(range(self.num_inputs))), ((), ()))
    )
    if self.use_bias:
      bias = self.param(
        "bias", _param(nn.initializers.zeros, *self.axes[self.num_inputs :]), self.features, cfg.base_param_dtype
      )
      y = y + bias.astype(cfg.dtype)
    if cfg.lora_rank and self.target in cfg.lora_targets:
      y = y + self._adapted(x, in_shape, contract, deterministic)
    return y

  def _adapted(self, x, in_shape, contract, deterministic):
    """(alpha / rank)·(x·A)·B, with dropout on the adapters' input while training."""
    cfg = self.config
    rank = cfg.lora_rank
    in_axes, out_axes = self.axes[: self.num_inputs], self.axes[self.num_inputs :]
    # Initialisers run only when the adapters are created (model.init), never in apply.
    a = self.variable(
      "lora",
      "lora_a",
      lambda: _param(_lora_a_init, *in_axes, None)(self.make_rng("params"), (*in_shape, rank), cfg.param_dtype),
    ).value
    b = self.variable(
      "lora",
      "lora_b",
      lambda: _param(nn.initializers.zeros, None, *out_axes)(None, (rank, *self.features), cfg.param_dtype),
    ).value
    if cfg.lora_dropout and not deterministic:
      x = nn.Dropout(cfg.lora_dropout)(x, deterministic=False)
    contraction = ((contract, tuple(range(self.num_inputs))), ((), ()))
    h = jax.lax.dot_general(x.astype(cfg.dtype), nn.unbox(a).astype(cfg.dtype), contraction)
    out = jax.lax.dot_general(h, nn.unbox(b).astype(cfg.dtype), (((h.ndim - 1,), (0,)), ((), ())))
    return out * jnp.asarray(cfg.lora_alpha / rank, cfg.dtype)


# --- Whole trees: the projections' paths, quantizing a base, merging adapters ----------------

# (block, projection, inputs) of every projection, under the scanned "layers".
PROJECTIONS = (
  ("attention", "q", 1),
  ("attention", "k", 1),
  ("attention", "v", 1),
  ("attention", "o", 2),
  ("mlp", "gate", 1),
  ("mlp", "up", 1),
  ("mlp", "down", 1),
)


def quantize_base(params, config: ModelConfig):
  """A plain parameter tree with every projection kernel replaced by (codes, scales)."""
  layers = dict(params["layers"])
  for block, target, inputs in PROJECTIONS:
    module = dict(layers[block][f"{target}_proj"])
    # Stacked over layers: the layer axis joins the leading (non-blocked) input dimensions.
    codes, scales = quantize(module.pop("kernel"), config.base_quantization, config.quantization_block, inputs + 1)
    module.update(kernel_codes=codes, kernel_scales=scales)
    layers[block] = {**layers[block], f"{target}_proj": module}
  return {**params, "layers": layers}


def merge_adapters(params, adapters, config: ModelConfig):
  """The plain parameters of base + adapters: every adapted kernel W + (alpha / rank)·A·B, in
  param_dtype, the base dequantized first (float32 arithmetic)."""
  plain = config.without_adapters()
  layers = dict(params["layers"])
  scale = config.lora_alpha / max(config.lora_rank, 1)
  for block, target, inputs in PROJECTIONS:
    module = dict(layers[block][f"{target}_proj"])
    if "kernel_codes" in module:
      kernel = dequantize(
        module.pop("kernel_codes"), module.pop("kernel_scales"), config.base_quantization, inputs + 1, jnp.float32
      )
    else:
      kernel = module.pop("kernel").astype(jnp.float32)
    if adapters and target in config.lora_targets:
      lora = adapters["layers"][block][f"{target}_proj"]
      a, b = lora["lora_a"].astype(jnp.float32), lora["lora_b"].astype(jnp.float32)
      layers_, rank = a.shape[0], a.shape[-1]
      delta = jnp.einsum("lir,lro->lio", a.reshape(layers_, -1, rank), b.reshape(layers_, rank, -1))
      kernel = kernel + scale * delta.reshape(kernel.shape)
    module["kernel"] = kernel.astype(plain.param_dtype)
    layers[block] = {**layers[block], f"{target}_proj": module}
  cast = lambda x: x.astype(plain.param_dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(cast, {**params, "layers": layers})
