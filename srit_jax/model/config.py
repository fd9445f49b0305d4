"""Architecture of the decoder: one frozen dataclass, named presets, HF config I/O.

`ModelConfig` says what the network is (sizes, rotary settings, bias and tying, and the
switches by which Gemma 2/3, Qwen3 and Phi-3 differ from Llama); numerics
(`dtype`, `param_dtype`) and the rematerialisation policy ride along because every caller
that builds the model needs them, and `dataclasses.replace` changes them per run.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")
ARCHITECTURES = {
  "llama": "LlamaForCausalLM",
  "mistral": "MistralForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
  "qwen3": "Qwen3ForCausalLM",
  "phi3": "Phi3ForCausalLM",
  "gemma2": "Gemma2ForCausalLM",
  "gemma3_text": "Gemma3ForCausalLM",
}
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


# Our field -> the name of config.json (what an error names).
HF_FIELD_NAMES = {
  "embed_dim": "hidden_size",
  "mlp_dim": "intermediate_size",
  "num_layers": "num_hidden_layers",
  "num_heads": "num_attention_heads",
  "num_kv_heads": "num_key_value_heads",
  "eos_token_ids": "eos_token_id",
  "tie_embeddings": "tie_word_embeddings",
}
_POSITIVE_INTS = (
  "vocab_size", "embed_dim", "mlp_dim", "num_layers", "num_heads", "num_kv_heads", "head_dim",
  "max_position_embeddings",
)  # fmt: skip
_POSITIVE_NUMBERS = ("rms_norm_eps", "rope_theta")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def check_architecture(fields: dict[str, Any], where: str, names: dict[str, str], *, head_dim_given: bool = True):
  """Every architecture field read from a checkpoint (config.json, GGUF metadata) checked before
  any array is built: types, ranges and consistency (heads divide the width, key/value heads
  divide the heads, the vocabulary holds the special tokens). `names` maps our fields to the
  source's, which each error names with `where`."""

  def fail(field: str, problem: str):
    raise InvalidModelConfigError(f"{where}: field {names.get(field, field)!r} is {fields[field]!r}; {problem}")

  for field in _POSITIVE_INTS:
    if not _is_int(fields[field]) or fields[field] < 1:
      fail(field, "expected a positive integer")
  for field in _POSITIVE_NUMBERS:
    value = fields[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
      fail(field, "expected a positive number")
  window = fields.get("sliding_window")
  if window is not None and (not _is_int(window) or window < 1):
    fail("sliding_window", "expected a positive integer or null")
  if not isinstance(fields.get("tie_embeddings", False), bool):
    fail("tie_embeddings", "expected true or false")
  if fields["num_heads"] % fields["num_kv_heads"]:
    fail("num_kv_heads", f"it must divide {names.get('num_heads', 'num_heads')} ({fields['num_heads']})")
  if not head_dim_given and fields["embed_dim"] % fields["num_heads"]:
    fail("embed_dim", f"it must be a multiple of {names.get('num_heads', 'num_heads')} ({fields['num_heads']})")
  vocab = fields["vocab_size"]
  for field in ("bos_token_id", "pad_token_id"):
    value = fields.get(field)
    if value is not None and (not _is_int(value) or not 0 <= value < vocab):
      fail(field, f"expected a token id below {names.get('vocab_size', 'vocab_size')} ({vocab}) or null")
  for token in fields.get("eos_token_ids", ()):
    if not _is_int(token) or not 0 <= token < vocab:
      fail("eos_token_ids", f"expected token ids below {names.get('vocab_size', 'vocab_size')} ({vocab})")


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
  and written to its `config.json`.
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

  @classmethod
  def from_hf_config(cls, source: str | pathlib.Path | dict[str, Any], **overrides) -> ModelConfig:
    """Reads a `config.json` (a path, a directory holding one, or its parsed dict)."""
    where = "config dict"
    if not isinstance(source, dict):
      path = pathlib.Path(source)
      if path.is_dir():
        path = path / "config.json"
      where = str(path)
      try:
        source = json.loads(path.read_text(encoding="utf-8"))
      except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no config.json here") from None
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
      if not isinstance(source, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(source).__name__}")
    hf = text_config(source)
    fields = _fields_from_hf(source, where)
    check_architecture(fields, where, HF_FIELD_NAMES, head_dim_given=hf.get("head_dim") is not None)
    return cls(**fields, **overrides)

  def to_hf_config(self) -> dict[str, Any]:
    """The `config.json` that `transformers` loads into the matching `*ForCausalLM`."""
    activation = {ours: hf for hf, ours in HIDDEN_ACTIVATIONS.items()}[self.hidden_activation]
    hf = {
      "architectures": [ARCHITECTURES[self.model_type]],
      "model_type": self.model_type,
      "vocab_size": self.vocab_size,
      "hidden_size": self.embed_dim,
      "intermediate_size": self.mlp_dim,
      "num_hidden_layers": self.num_layers,
      "num_attention_heads": self.num_heads,
      "num_key_value_heads": self.num_kv_heads,
      "head_dim": self.head_dim,
      "hidden_act": activation,
      "rms_norm_eps": self.rms_norm_eps,
      "rope_theta": self.rope_theta,
      "rope_scaling": _rope_scaling_to_hf(self.rope_scaling),
      "max_position_embeddings": self.max_position_embeddings,
      "tie_word_embeddings": self.tie_embeddings,
      "bos_token_id": self.bos_token_id,
      "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else self.eos_token_ids[0],
      "pad_token_id": self.pad_token_id,
      "torch_dtype": self.param_dtype,
    }
    layer_types = ["sliding_attention" if self.is_sliding(i) else "full_attention" for i in range(self.num_layers)]
    if self.model_type == "llama":
      hf.update(attention_bias=False, mlp_bias=False)
    if self.model_type in ("mistral", "phi3"):
      hf["sliding_window"] = self.sliding_window
    if self.model_type in ("qwen2", "qwen3"):
      hf.update(
        use_sliding_window=self.sliding_window is not None,
        sliding_window=self.sliding_window,
        max_window_layers=next((i for i in range(self.num_layers) if self.is_sliding(i)), self.num_layers),
        layer_types=layer_types,
      )
    if self.model_type == "qwen3":
      hf["attention_bias"] = False
    if self.model_type == "phi3":
      hf.update(original_max_position_embeddings=self.max_position_embeddings, partial_rotary_factor=1.0)
    if self.model_type in ("gemma2", "gemma3_text"):
      hf.update(
        hidden_activation=activation,
        query_pre_attn_scalar=_int_if_whole(self.query_pre_attn_scalar or self.head_dim),
        attn_logit_softcapping=self.attn_logit_softcap,
        final_logit_softcapping=self.final_logit_softcap,
        sliding_window=self.sliding_window,
        layer_types=layer_types,
        attention_bias=False,
      )
    if self.model_type == "gemma3_text":
      full = {"rope_type": "default", "rope_theta": self.rope_theta, **(_rope_scaling_to_hf(self.rope_scaling) or {})}
      local = {"rope_type": "default", "rope_theta": self.local_rope_theta or self.rope_theta}
      hf.update(
        rope_parameters={"full_attention": full, "sliding_attention": local},
        rope_local_base_freq=local["rope_theta"],
        use_bidirectional_attention=False,
      )
    return hf


_GEMMA = ("gemma2", "gemma3_text")


def _int_if_whole(x: float) -> int | float:
  return int(x) if float(x).is_integer() else x


def text_config(hf: dict[str, Any]) -> dict[str, Any]:
  """The language model's config of a multimodal Gemma 3 checkpoint (`text_config`), else `hf`."""
  if hf.get("model_type") == "gemma3" and isinstance(hf.get("text_config"), dict):
    return {"model_type": "gemma3_text", **hf["text_config"]}
  return hf


def _fields_from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
  hf = text_config(hf)

  def need(key):
    if key not in hf:
      raise ValueError(f"{where}: field {key!r} is missing")
    return hf[key]

  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise UnsupportedModelError(
      f"{where}: field 'model_type' is {model_type!r} (architectures {hf.get('architectures')}); "
      f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )
  activation_field = "hidden_activation" if model_type in _GEMMA and "hidden_activation" in hf else "hidden_act"
  activation = hf.get(activation_field) or ("gelu_pytorch_tanh" if model_type in _GEMMA else "silu")
  if activation not in HIDDEN_ACTIVATIONS:
    raise UnsupportedModelError(
      f"{where}: field {activation_field!r} is {activation!r}; supported: {', '.join(HIDDEN_ACTIVATIONS)}"
    )
  if hf.get("mlp_bias"):
    raise UnsupportedModelError(f"{where}: field 'mlp_bias' is true; MLP biases are not supported")
  if model_type != "qwen2" and hf.get("attention_bias"):
    raise UnsupportedModelError(
      f"{where}: field 'attention_bias' is true; attention biases are supported for qwen2 only"
    )
  if model_type in _GEMMA and hf.get("use_bidirectional_attention"):
    raise UnsupportedModelError(
      f"{where}: field 'use_bidirectional_attention' is true; only causal attention is supported"
    )

  num_heads = need("num_attention_heads")
  embed_dim = need("hidden_size")
  # transformers 5 nests rope settings under `rope_parameters` (per layer type for Gemma 3);
  # older configs keep them flat.
  rope = hf.get("rope_parameters") or {}
  local_rope = rope.get("sliding_attention") if isinstance(rope.get("sliding_attention"), dict) else None
  rope = rope.get("full_attention", rope) if isinstance(rope.get("full_attention"), dict) else rope
  rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
  scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
  if float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) or 1.0) != 1.0:
    raise UnsupportedModelError(f"{where}: field 'partial_rotary_factor' is below 1; only full rotary is supported")

  num_layers = need("num_hidden_layers")
  sliding_window = None
  if model_type in ("mistral", "phi3", *_GEMMA) or (model_type in ("qwen2", "qwen3") and hf.get("use_sliding_window")):
    sliding_window = hf.get("sliding_window")
  layer_types = ()
  if sliding_window is not None and model_type in ("qwen2", "qwen3", *_GEMMA):
    layer_types = tuple(hf.get("layer_types") or _default_layer_types(hf, model_type, num_layers))
    if len(layer_types) != num_layers or set(layer_types) - set(LAYER_TYPES):
      raise UnsupportedModelError(
        f"{where}: field 'layer_types' must list {num_layers} of {', '.join(LAYER_TYPES)}, got {list(layer_types)}"
      )
    if "sliding_attention" not in layer_types:
      sliding_window, layer_types = None, ()
    elif "full_attention" not in layer_types:
      layer_types = ()

  local_rope_theta = None
  if model_type == "gemma3_text":
    local_rope_theta = float((local_rope or {}).get("rope_theta", hf.get("rope_local_base_freq", 10_000.0)))

  gemma = model_type in _GEMMA
  eos = hf.get("eos_token_id", 2)
  return dict(
    model_type=model_type,
    vocab_size=need("vocab_size"),
    embed_dim=embed_dim,
    mlp_dim=need("intermediate_size"),
    num_layers=num_layers,
    num_heads=num_heads,
    num_kv_heads=hf.get("num_key_value_heads") or num_heads,
    head_dim=hf.get("head_dim") or (embed_dim // num_heads if _is_int(embed_dim) and _is_int(num_heads) else 0),
    rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
    rope_theta=float(rope_theta)
    if isinstance(rope_theta, (int, float)) and not isinstance(rope_theta, bool)
    else rope_theta,
    rope_scaling=_rope_scaling_from_hf(scaling, where),
    max_position_embeddings=hf.get("max_position_embeddings", 4096),
    tie_embeddings=gemma if hf.get("tie_word_embeddings") is None else hf["tie_word_embeddings"],
    qkv_bias=model_type == "qwen2",
    sliding_window=sliding_window,
    bos_token_id=hf.get("bos_token_id"),
    eos_token_ids=tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ()),
    pad_token_id=hf.get("pad_token_id"),
    hidden_activation=HIDDEN_ACTIVATIONS[activation],
    norm_weight_offset=1.0 if gemma else 0.0,
    scale_embeddings=gemma,
    sandwich_norms=gemma,
    qk_norm=model_type in ("qwen3", "gemma3_text"),
    query_pre_attn_scalar=float(hf["query_pre_attn_scalar"]) if gemma and hf.get("query_pre_attn_scalar") else None,
    attn_logit_softcap=_positive_or_none(hf, "attn_logit_softcapping", where) if gemma else None,
    final_logit_softcap=_positive_or_none(hf, "final_logit_softcapping", where) if gemma else None,
    layer_types=layer_types,
    local_rope_theta=local_rope_theta,
  )


def _default_layer_types(hf: dict[str, Any], model_type: str, num_layers: int) -> list[str]:
  """Layer types of configs written before transformers listed them."""
  if model_type in ("qwen2", "qwen3"):  # sliding from layer max_window_layers on
    first = hf.get("max_window_layers", num_layers)
    return ["sliding_attention" if i >= first else "full_attention" for i in range(num_layers)]
  period = 2 if model_type == "gemma2" else hf.get("sliding_window_pattern", 6)  # every period-th layer is global
  return ["full_attention" if (i + 1) % period == 0 else "sliding_attention" for i in range(num_layers)]


def _positive_or_none(hf: dict[str, Any], key: str, where: str) -> float | None:
  value = hf.get(key)
  if value is None:
    return None
  if not isinstance(value, (int, float)) or value <= 0:
    raise UnsupportedModelError(f"{where}: field {key!r} is {value!r}; expected a positive number or null")
  return float(value)


def _rope_scaling_from_hf(scaling: dict[str, Any] | None, where: str) -> RopeScaling | None:
  if not scaling:
    return None
  kind = scaling.get("rope_type", scaling.get("type"))
  if kind in (None, "default"):
    return None
  if kind == "linear":
    return RopeScaling(kind="linear", factor=float(scaling["factor"]))
  if kind == "llama3":
    return RopeScaling(
      kind="llama3",
      factor=float(scaling["factor"]),
      low_freq_factor=float(scaling["low_freq_factor"]),
      high_freq_factor=float(scaling["high_freq_factor"]),
      original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
    )
  raise UnsupportedModelError(f"{where}: field 'rope_scaling' has type {kind!r}; supported: linear, llama3")


def _rope_scaling_to_hf(scaling: RopeScaling | None) -> dict[str, Any] | None:
  if scaling is None:
    return None
  if scaling.kind == "linear":
    return {"rope_type": "linear", "factor": scaling.factor}
  return {
    "rope_type": "llama3",
    "factor": scaling.factor,
    "low_freq_factor": scaling.low_freq_factor,
    "high_freq_factor": scaling.high_freq_factor,
    "original_max_position_embeddings": scaling.original_max_position_embeddings,
  }
