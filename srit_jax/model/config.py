"""Architecture of a Llama-family decoder: one frozen dataclass, named presets, HF config I/O.

`ModelConfig` says what the network is (sizes, rotary settings, bias and tying); numerics
(`dtype`, `param_dtype`) and the rematerialisation policy ride along because every caller
that builds the model needs them, and `dataclasses.replace` changes them per run.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_KERNELS = ("auto", "xla", "splash", "blockwise", "cudnn")
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")  # the projections an adapter may sit on
BASE_QUANTIZATIONS = ("none", "int8", "nf4")


class UnsupportedModelError(ValueError):
  """The checkpoint describes an architecture or feature this model does not implement."""


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
  """A Llama-family decoder: RMSNorm, rotary, grouped-query attention, SwiGLU."""

  model_type: str  # "llama" | "mistral" | "qwen2": the HF family, kept for export.
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
  # Numerics and memory, not architecture.
  dtype: str = "float32"  # compute dtype of activations and matmuls
  param_dtype: str = "float32"  # storage dtype of the parameters
  remat_policy: str = "none"  # one of REMAT_POLICIES
  attention: str = "auto"  # one of ATTENTION_KERNELS; "auto": by platform (see srit_jax/model/attention.py)
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
    return cls(**_fields_from_hf(source, where), **overrides)

  def to_hf_config(self) -> dict[str, Any]:
    """The `config.json` that `transformers` loads into the matching `*ForCausalLM`."""
    architecture = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    hf = {
      "architectures": [architecture[self.model_type]],
      "model_type": self.model_type,
      "vocab_size": self.vocab_size,
      "hidden_size": self.embed_dim,
      "intermediate_size": self.mlp_dim,
      "num_hidden_layers": self.num_layers,
      "num_attention_heads": self.num_heads,
      "num_key_value_heads": self.num_kv_heads,
      "head_dim": self.head_dim,
      "hidden_act": "silu",
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
    if self.model_type == "llama":
      hf.update(attention_bias=False, mlp_bias=False)
    if self.model_type == "mistral":
      hf["sliding_window"] = self.sliding_window
    if self.model_type == "qwen2":
      hf.update(use_sliding_window=self.sliding_window is not None, sliding_window=self.sliding_window)
    return hf


def _fields_from_hf(hf: dict[str, Any], where: str) -> dict[str, Any]:
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
  if hf.get("hidden_act", "silu") != "silu":
    raise UnsupportedModelError(f"{where}: field 'hidden_act' is {hf['hidden_act']!r}; only 'silu' is supported")
  if hf.get("mlp_bias"):
    raise UnsupportedModelError(f"{where}: field 'mlp_bias' is true; MLP biases are not supported")
  if model_type == "llama" and hf.get("attention_bias"):
    raise UnsupportedModelError(
      f"{where}: field 'attention_bias' is true; Llama output-projection bias is not supported"
    )

  num_heads = need("num_attention_heads")
  embed_dim = need("hidden_size")
  # transformers 5 nests rope settings under `rope_parameters`; older configs keep them flat.
  rope = hf.get("rope_parameters") or {}
  rope_theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
  scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)

  sliding_window = None
  if model_type == "mistral" or (model_type == "qwen2" and hf.get("use_sliding_window")):
    sliding_window = hf.get("sliding_window")

  eos = hf.get("eos_token_id", 2)
  return dict(
    model_type=model_type,
    vocab_size=need("vocab_size"),
    embed_dim=embed_dim,
    mlp_dim=need("intermediate_size"),
    num_layers=need("num_hidden_layers"),
    num_heads=num_heads,
    num_kv_heads=hf.get("num_key_value_heads") or num_heads,
    head_dim=hf.get("head_dim") or embed_dim // num_heads,
    rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
    rope_theta=float(rope_theta),
    rope_scaling=_rope_scaling_from_hf(scaling, where),
    max_position_embeddings=hf.get("max_position_embeddings", 4096),
    tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    qkv_bias=model_type == "qwen2",
    sliding_window=sliding_window,
    bos_token_id=hf.get("bos_token_id"),
    eos_token_ids=tuple(eos) if isinstance(eos, list) else ((eos,) if eos is not None else ()),
    pad_token_id=hf.get("pad_token_id"),
  )


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


_LLAMA3_1_SCALING = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
_LLAMA3_2_SCALING = RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)

PRESETS: dict[str, ModelConfig] = {
  # Seconds on any machine: the benchmarks' and examples' smoke model (random weights only).
  "tiny": ModelConfig("llama", 512, 64, 128, 2, 4, 2, 16, max_position_embeddings=2048),
  "smollm2-135m": ModelConfig(
    "llama",
    49152,
    576,
    1536,
    30,
    9,
    3,
    64,
    rms_norm_eps=1e-5,
    rope_theta=100_000.0,
    max_position_embeddings=8192,
    tie_embeddings=True,
    bos_token_id=1,
    eos_token_ids=(2,),
    pad_token_id=2,
  ),
  "smollm2-360m": ModelConfig(
    "llama",
    49152,
    960,
    2560,
    32,
    15,
    5,
    64,
    rms_norm_eps=1e-5,
    rope_theta=100_000.0,
    max_position_embeddings=8192,
    tie_embeddings=True,
    bos_token_id=1,
    eos_token_ids=(2,),
    pad_token_id=2,
  ),
  "tinyllama-1.1b": ModelConfig(
    "llama",
    32000,
    2048,
    5632,
    22,
    32,
    4,
    64,
    rms_norm_eps=1e-5,
    max_position_embeddings=2048,
  ),
  "llama2-7b": ModelConfig("llama", 32000, 4096, 11008, 32, 32, 32, 128, max_position_embeddings=4096),
  "llama2-13b": ModelConfig("llama", 32000, 5120, 13824, 40, 40, 40, 128, max_position_embeddings=4096),
  "llama3.2-1b": ModelConfig(
    "llama",
    128256,
    2048,
    8192,
    16,
    32,
    8,
    64,
    rope_theta=500_000.0,
    rope_scaling=_LLAMA3_2_SCALING,
    max_position_embeddings=131072,
    tie_embeddings=True,
    bos_token_id=128000,
    eos_token_ids=(128001, 128008, 128009),
  ),
  "llama3.1-8b": ModelConfig(
    "llama",
    128256,
    4096,
    14336,
    32,
    32,
    8,
    128,
    rope_theta=500_000.0,
    rope_scaling=_LLAMA3_1_SCALING,
    max_position_embeddings=131072,
    bos_token_id=128000,
    eos_token_ids=(128001, 128008, 128009),
  ),
  "mistral-7b": ModelConfig(
    "mistral",
    32000,
    4096,
    14336,
    32,
    32,
    8,
    128,
    max_position_embeddings=32768,
    sliding_window=4096,
  ),
  "qwen2.5-0.5b": ModelConfig(
    "qwen2",
    151936,
    896,
    4864,
    24,
    14,
    2,
    64,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    max_position_embeddings=32768,
    tie_embeddings=True,
    qkv_bias=True,
    bos_token_id=None,
    eos_token_ids=(151645,),
    pad_token_id=151643,
  ),
  "qwen2.5-7b": ModelConfig(
    "qwen2",
    152064,
    3584,
    18944,
    28,
    28,
    4,
    128,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    max_position_embeddings=32768,
    qkv_bias=True,
    bos_token_id=None,
    eos_token_ids=(151645,),
    pad_token_id=151643,
  ),
}


def get_preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
  return dataclasses.replace(PRESETS[name], **overrides)
