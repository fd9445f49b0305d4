"""A model's `config.json`, the Hugging Face description of its architecture, read into a
`ModelConfig` (`read`) and written from one (`config_json`): the names and defaults each family
gives its fields, and what this decoder does not implement, refused with the field named. Every
architecture read from a checkpoint (config.json or GGUF metadata) passes `check_architecture`
before any array is built.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from srit_jax.model.config import (
  HIDDEN_ACTIVATIONS,
  LAYER_TYPES,
  SUPPORTED_MODEL_TYPES,
  InvalidModelConfigError,
  ModelConfig,
  RopeScaling,
  UnsupportedModelError,
)

ARCHITECTURES = {
  "llama": "LlamaForCausalLM",
  "mistral": "MistralForCausalLM",
  "qwen2": "Qwen2ForCausalLM",
  "qwen3": "Qwen3ForCausalLM",
  "phi3": "Phi3ForCausalLM",
  "gemma2": "Gemma2ForCausalLM",
  "gemma3_text": "Gemma3ForCausalLM",
}

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


def read(source: str | pathlib.Path | dict[str, Any], **overrides) -> ModelConfig:
  """The `ModelConfig` of a `config.json` (a path, a directory holding one, or its parsed dict);
  `overrides` set the fields that are not architecture (numerics, adapters)."""
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
  return ModelConfig(**fields, **overrides)


def config_json(config: ModelConfig) -> dict[str, Any]:
  """The `config.json` that `transformers` loads into the matching `*ForCausalLM`."""
  activation = {ours: hf for hf, ours in HIDDEN_ACTIVATIONS.items()}[config.hidden_activation]
  hf = {
    "architectures": [ARCHITECTURES[config.model_type]],
    "model_type": config.model_type,
    "vocab_size": config.vocab_size,
    "hidden_size": config.embed_dim,
    "intermediate_size": config.mlp_dim,
    "num_hidden_layers": config.num_layers,
    "num_attention_heads": config.num_heads,
    "num_key_value_heads": config.num_kv_heads,
    "head_dim": config.head_dim,
    "hidden_act": activation,
    "rms_norm_eps": config.rms_norm_eps,
    "rope_theta": config.rope_theta,
    "rope_scaling": _rope_scaling_to_hf(config.rope_scaling),
    "max_position_embeddings": config.max_position_embeddings,
    "tie_word_embeddings": config.tie_embeddings,
    "bos_token_id": config.bos_token_id,
    "eos_token_id": list(config.eos_token_ids) if len(config.eos_token_ids) > 1 else config.eos_token_ids[0],
    "pad_token_id": config.pad_token_id,
    "torch_dtype": config.param_dtype,
  }
  layer_types = ["sliding_attention" if config.is_sliding(i) else "full_attention" for i in range(config.num_layers)]
  if config.model_type == "llama":
    hf.update(attention_bias=False, mlp_bias=False)
  if config.model_type in ("mistral", "phi3"):
    hf["sliding_window"] = config.sliding_window
  if config.model_type in ("qwen2", "qwen3"):
    hf.update(
      use_sliding_window=config.sliding_window is not None,
      sliding_window=config.sliding_window,
      max_window_layers=next((i for i in range(config.num_layers) if config.is_sliding(i)), config.num_layers),
      layer_types=layer_types,
    )
  if config.model_type == "qwen3":
    hf["attention_bias"] = False
  if config.model_type == "phi3":
    hf.update(original_max_position_embeddings=config.max_position_embeddings, partial_rotary_factor=1.0)
  if config.model_type in ("gemma2", "gemma3_text"):
    hf.update(
      hidden_activation=activation,
      query_pre_attn_scalar=_int_if_whole(config.query_pre_attn_scalar or config.head_dim),
      attn_logit_softcapping=config.attn_logit_softcap,
      final_logit_softcapping=config.final_logit_softcap,
      sliding_window=config.sliding_window,
      layer_types=layer_types,
      attention_bias=False,
    )
  if config.model_type == "gemma3_text":
    full = {"rope_type": "default", "rope_theta": config.rope_theta, **(_rope_scaling_to_hf(config.rope_scaling) or {})}
    local = {"rope_type": "default", "rope_theta": config.local_rope_theta or config.rope_theta}
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
