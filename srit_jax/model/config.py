"""Architecture of the decoder: one frozen dataclass and the names of its options.

`ModelConfig` says what the network is (sizes, rotary settings, bias and tying, and the
switches by which Gemma 2/3, Qwen3 and Phi-3 differ from Llama); numerics
(`dtype`, `param_dtype`) and the rematerialisation policy ride along because every caller
that builds the model needs them, and `dataclasses.replace` changes them per run. Named
presets are srit_jax/model/presets.py's; a checkpoint's `config.json` is read and written by
srit_jax/conversion/hf_config.py.
"""

from __future__ import annotations

import dataclasses

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")
HIDDEN_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}  # HF name -> ours
LAYER_TYPES = ("full_attention", "sliding_attention")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_KERNELS = ("auto", "xla", "splash", "blockwise", "cudnn")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # the projections an adapter may sit on
BASE_QUANTIZATIONS = ("none", "int8", "nf4")


class UnsupportedModelError(ValueError):
  """The checkpoint describes an architecture or feature this model does not implement."""


class InvalidModelConfigError(ValueError):
  """A model's config holds a value of the wrong type, out of range, or inconsistent with another."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Rotary frequency scaling: `linear` (position interpolation) or `llama3`."""

  kind: str
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A pre-norm decoder: RMSNorm, rotary, grouped-query attention, a gated MLP.

  Llama is the plain case; each way another family differs is one field below, read from
  and written to its `config.json` (srit_jax/conversion/hf_config.py).
  """

  model_type: str  # one of SUPPORTED_MODEL_TYPES: the HF family, kept for export.
  vocab_size: int
  embed_dim: int
  mlp_dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10_000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 4096
  tie_embeddings: bool = False
  qkv_bias: bool = False
  sliding_window: int | None = None
  bos_token_id: int | None = 1
  eos_token_ids: tuple[int, ...] = (2,)
  pad_token_id: int | None = None
  # How Gemma 2/3, Qwen3 and Phi-3 differ from Llama.
  hidden_activation: str = "silu"  # of the MLP's gate: "silu" (SwiGLU) | "gelu_tanh" (GeGLU)
  norm_weight_offset: float = 0.0  # RMSNorm multiplies by (offset + weight); Gemma: 1
  scale_embeddings: bool = False  # embeddings times sqrt(embed_dim) in the compute dtype (Gemma)
  sandwich_norms: bool = False  # attention and MLP outputs normed before their residual (Gemma 2/3)
  qk_norm: bool = False  # RMSNorm over each query and key head before rotary (Qwen3, Gemma 3)
  query_pre_attn_scalar: float | None = None  # scores scaled by its -1/2 power; None: head_dim
  attn_logit_softcap: float | None = None  # scores -> cap * tanh(scores / cap) (Gemma 2)
  final_logit_softcap: float | None = None  # likewise for the output logits (Gemma 2)
  # Per layer "sliding_attention" or "full_attention" (Gemma 2/3 alternate them); empty: every
  # layer slides when sliding_window is set.
  layer_types: tuple[str, ...] = ()
  local_rope_theta: float | None = None  # rotary base of sliding layers, unscaled (Gemma 3)
  # Numerics and memory, not architecture.
  dtype: str = "float32"  # compute dtype of activations and matmuls
  param_dtype: str = "float32"  # storage dtype of the parameters
  remat_policy: str = "none"  # one of REMAT_POLICIES
  attention: str = "auto"  # one of ATTENTION_KERNELS; "auto": by platform (see srit_jax/model/attention.py)
  scan_unroll: int = 1  # layers per iteration of the layer scan (the plan unrolls shallow copies to count costs)
  # Parameter-efficient tuning (srit_jax/model/lora.py): adapters of `lora_rank` on `lora_targets`
  # over a frozen base stored in `base_dtype` (empty: param_dtype), optionally quantized.
  lora_rank: int = 0  # 0: no adapters (full fine-tuning)
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = LORA_TARGETS
  lora_dropout: float = 0.0
  base_dtype: str = ""
  base_quantization: str = "none"  # none | int8 | nf4 (QLoRA)
  quantization_block: int = 64  # inputs per quantization scale

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise UnsupportedModelError(
        f"model_type {self.model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}"
      )
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"remat_policy {self.remat_policy!r} is not one of {REMAT_POLICIES}")
    if self.attention not in ATTENTION_KERNELS:
      raise ValueError(f"attention {self.attention!r} is not one of {ATTENTION_KERNELS}")
    if self.hidden_activation not in HIDDEN_ACTIVATIONS.values():
      raise ValueError(
        f"hidden_activation {self.hidden_activation!r} is not one of {tuple(HIDDEN_ACTIVATIONS.values())}"
      )
    if self.layer_types:
      if len(self.layer_types) != self.num_layers:
        raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
      unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
      if unknown:
        raise ValueError(f"layer_types {unknown} are not among {LAYER_TYPES}")
      if "sliding_attention" in self.layer_types and not self.sliding_window:
        raise ValueError("layer_types has sliding_attention layers but sliding_window is not set")
    for name in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar", "sliding_window"):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ValueError(f"{name} must be positive or None, got {value}")
    self._check_lora()

  def _check_lora(self) -> None:
    if self.lora_rank < 0:
      raise ValueError(f"lora rank must be >= 0, got {self.lora_rank}")
    unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
    if unknown:
      raise ValueError(f"lora targets {unknown} are not projections of this model; targets: {', '.join(LORA_TARGETS)}")
    if self.base_quantization not in BASE_QUANTIZATIONS:
      raise ValueError(f"base_quantization {self.base_quantization!r} is not one of {BASE_QUANTIZATIONS}")
    if self.base_quantization != "none" and not self.lora_rank:
      raise ValueError(f"a {self.base_quantization} base trains only through adapters: set a lora rank above 0")
    if self.lora_rank:
      for target in self.lora_targets:
        rows, columns = self.projection_shape(target)
        if self.lora_rank > min(rows, columns):
          raise ValueError(
            f"lora rank {self.lora_rank} exceeds the smaller side of the {target} projection ({rows} x {columns})"
          )

  def projection_shape(self, target: str) -> tuple[int, int]:
    """(inputs, outputs) of a projection."""
    q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
    return {
      "q": (self.embed_dim, q),
      "k": (self.embed_dim, kv),
      "v": (self.embed_dim, kv),
      "o": (q, self.embed_dim),
      "gate": (self.embed_dim, self.mlp_dim),
      "up": (self.embed_dim, self.mlp_dim),
      "down": (self.mlp_dim, self.embed_dim),
    }[target]

  def is_sliding(self, layer: int) -> bool:
    """Whether `layer` attends within the sliding window."""
    if self.sliding_window is None:
      return False
    return not self.layer_types or self.layer_types[layer] == "sliding_attention"

  @property
  def mixed_layers(self) -> bool:
    """Whether layers differ in window or rotary base (then the layer scan carries which is which)."""
    return len({self.is_sliding(i) for i in range(self.num_layers)}) > 1

  @property
  def query_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  @property
  def fused_projections(self) -> bool:
    """Whether the HF checkpoint fuses q/k/v and gate/up into one tensor each (Phi-3)."""
    return self.model_type == "phi3"

  @property
  def base_param_dtype(self) -> str:
    """The storage dtype of the base parameters (frozen under LoRA)."""
    return self.base_dtype or self.param_dtype

  def without_adapters(self) -> ModelConfig:
    """The same network as one plain model: no adapters, an unquantized base in param_dtype."""
    return dataclasses.replace(self, lora_rank=0, base_quantization="none", base_dtype="")
