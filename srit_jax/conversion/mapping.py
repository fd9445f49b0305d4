"""The one table between Hugging Face tensor names and our parameter tree, and its layouts.

Each row names a Hugging Face tensor (with `{layer}` for per-layer tensors, stacked along
the leading axis of our scanned parameters), the path of our parameter, and the layout
change between them. A row whose path is absent from a model (biases without `qkv_bias`,
`lm_head` with tied embeddings, the norms only Gemma or Qwen3 have) is skipped for that model.

Two families name their tensors otherwise, and are read and written through the same table:
Phi-3 fuses q/k/v and gate/up into one tensor each (`FUSED_HF_TENSORS`: split on load,
fused on export), and a multimodal Gemma 3 checkpoint holds its language model under a
prefix (`LANGUAGE_MODEL_PREFIXES`) beside vision tensors, which a text model leaves alone.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import numpy as np


class Layout(enum.Enum):
  SAME = "same"  # embeddings, norm scales
  LINEAR = "linear"  # HF [out, in] <-> ours [in, *out_dims]
  LINEAR_FROM_HEADS = "linear_from_heads"  # HF [out, N*H] <-> ours [N, H, out]
  HEADS_BIAS = "heads_bias"  # HF [N*H] <-> ours [N, H]


@dataclasses.dataclass(frozen=True)
class TensorRule:
  hf_name: str
  path: tuple[str, ...]
  layout: Layout

  @property
  def per_layer(self) -> bool:
    return "{layer}" in self.hf_name


def _layer(name: str) -> str:
  return "model.layers.{layer}." + name


HF_TENSOR_TABLE: tuple[TensorRule, ...] = (
  TensorRule("model.embed_tokens.weight", ("embedder", "embedding"), Layout.SAME),
  TensorRule(_layer("input_layernorm.weight"), ("layers", "input_norm", "scale"), Layout.SAME),
  TensorRule(_layer("self_attn.q_proj.weight"), ("layers", "attention", "q_proj", "kernel"), Layout.LINEAR),
  TensorRule(_layer("self_attn.k_proj.weight"), ("layers", "attention", "k_proj", "kernel"), Layout.LINEAR),
  TensorRule(_layer("self_attn.v_proj.weight"), ("layers", "attention", "v_proj", "kernel"), Layout.LINEAR),
  TensorRule(_layer("self_attn.q_proj.bias"), ("layers", "attention", "q_proj", "bias"), Layout.HEADS_BIAS),
  TensorRule(_layer("self_attn.k_proj.bias"), ("layers", "attention", "k_proj", "bias"), Layout.HEADS_BIAS),
  TensorRule(_layer("self_attn.v_proj.bias"), ("layers", "attention", "v_proj", "bias"), Layout.HEADS_BIAS),
  TensorRule(_layer("self_attn.o_proj.weight"), ("layers", "attention", "o_proj", "kernel"), Layout.LINEAR_FROM_HEADS),
  TensorRule(_layer("self_attn.q_norm.weight"), ("layers", "attention", "q_norm", "scale"), Layout.SAME),
  TensorRule(_layer("self_attn.k_norm.weight"), ("layers", "attention", "k_norm", "scale"), Layout.SAME),
  # Llama: the MLP's input norm; Gemma 2/3: the attention output's norm (see DecoderBlock).
  TensorRule(_layer("post_attention_layernorm.weight"), ("layers", "post_attention_norm", "scale"), Layout.SAME),
  TensorRule(_layer("pre_feedforward_layernorm.weight"), ("layers", "pre_mlp_norm", "scale"), Layout.SAME),
  TensorRule(_layer("post_feedforward_layernorm.weight"), ("layers", "post_mlp_norm", "scale"), Layout.SAME),
  TensorRule(_layer("mlp.gate_proj.weight"), ("layers", "mlp", "gate_proj", "kernel"), Layout.LINEAR),
  TensorRule(_layer("mlp.up_proj.weight"), ("layers", "mlp", "up_proj", "kernel"), Layout.LINEAR),
  TensorRule(_layer("mlp.down_proj.weight"), ("layers", "mlp", "down_proj", "kernel"), Layout.LINEAR),
  TensorRule("model.norm.weight", ("final_norm", "scale"), Layout.SAME),
  TensorRule("lm_head.weight", ("lm_head", "kernel"), Layout.LINEAR),
)

# Buffers some checkpoints carry that hold nothing a model needs.
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)

# Phi-3: per layer, a fused tensor and the tensors whose rows it stacks, in order.
FUSED_HF_TENSORS = {
  "self_attn.qkv_proj.weight": ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
  "mlp.gate_up_proj.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
}

# Multimodal Gemma 3: where its language model's tensors live (transformers 5, then 4), and
# the prefixes of what a text model leaves out.
LANGUAGE_MODEL_PREFIXES = {
  "model.language_model.": "model.",
  "language_model.model.": "model.",
  "language_model.lm_head.": "lm_head.",
}
NON_TEXT_PREFIXES = ("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.", "multi_modal_projector.")


def layer_suffix(hf_name: str) -> tuple[int, str] | None:
  """(layer, rest) of a per-layer name `model.layers.{layer}.{rest}`, else None."""
  parts = hf_name.split(".", 3)
  if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit():
    return int(parts[2]), parts[3]
  return None


def hf_shape(layout: Layout, ours: tuple[int, ...]) -> tuple[int, ...]:
  """The Hugging Face shape of one (per-layer) parameter of shape `ours`."""
  if layout is Layout.SAME:
    return ours
  if layout is Layout.LINEAR:
    return (math.prod(ours[1:]), ours[0])
  if layout is Layout.LINEAR_FROM_HEADS:
    return (ours[2], ours[0] * ours[1])
  return (math.prod(ours),)


def to_ours(layout: Layout, hf: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
  if layout is Layout.SAME:
    return hf
  if layout in (Layout.LINEAR, Layout.LINEAR_FROM_HEADS):
    return hf.T.reshape(ours)
  return hf.reshape(ours)


def to_hf(layout: Layout, ours: np.ndarray) -> np.ndarray:
  if layout is Layout.SAME:
    return ours
  if layout is Layout.LINEAR:
    return ours.reshape(ours.shape[0], -1).T
  if layout is Layout.LINEAR_FROM_HEADS:
    return ours.reshape(-1, ours.shape[-1]).T
  return ours.reshape(-1)
