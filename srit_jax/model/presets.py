"""Named model architectures (random-weight benchmarks, `srit-jax plan` of paper students, known
model names): a table of sizes, one row per preset, beside the settings each family shares.

A row: (name, family, vocab, embed, mlp, layers, heads, kv heads, head dim, its own settings).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from srit_jax.model.config import ModelConfig, RopeScaling

_LLAMA3_1 = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
_LLAMA3_2 = RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)
_GEMMA = dict(
  rms_norm_eps=1e-6,
  tie_embeddings=True,
  hidden_activation="gelu_tanh",
  norm_weight_offset=1.0,
  scale_embeddings=True,
  sandwich_norms=True,
  query_pre_attn_scalar=256.0,
  bos_token_id=2,
  pad_token_id=0,
)
_LLAMA3 = dict(model_type="llama", rope_theta=500_000.0, max_position_embeddings=131072, bos_token_id=128000,
               eos_token_ids=(128001, 128008, 128009))  # fmt: skip
_QWEN = dict(rms_norm_eps=1e-6, rope_theta=1_000_000.0, eos_token_ids=(151645,), pad_token_id=151643)

# What every member of a family shares; a callable takes the layer count (per-layer attention types).
FAMILIES: dict[str, dict[str, Any]] = {
  "tiny": dict(model_type="llama", max_position_embeddings=2048),
  "smollm2": dict(
    model_type="llama", rms_norm_eps=1e-5, rope_theta=100_000.0, max_position_embeddings=8192, tie_embeddings=True,
    bos_token_id=1, eos_token_ids=(2,), pad_token_id=2,
  ),
  "tinyllama": dict(model_type="llama", rms_norm_eps=1e-5, max_position_embeddings=2048),
  "llama2": dict(model_type="llama", max_position_embeddings=4096),
  "llama3": _LLAMA3,
  "mistral": dict(model_type="mistral", max_position_embeddings=32768, sliding_window=4096),
  "qwen2": dict(model_type="qwen2", max_position_embeddings=32768, qkv_bias=True, bos_token_id=None, **_QWEN),
  "qwen3": dict(
    model_type="qwen3", rms_norm_eps=1e-6, rope_theta=1_000_000.0, max_position_embeddings=40960, qk_norm=True,
    bos_token_id=151643, eos_token_ids=(151645, 151643), pad_token_id=151643,
  ),
  "phi3": dict(
    model_type="phi3", max_position_embeddings=4096, sliding_window=2047, bos_token_id=1,
    eos_token_ids=(32000, 32001, 32007), pad_token_id=32000,
  ),
  "gemma2": dict(
    model_type="gemma2", max_position_embeddings=8192, sliding_window=4096, attn_logit_softcap=50.0,
    final_logit_softcap=30.0, eos_token_ids=(1, 107),
    layer_types=lambda n: tuple("full_attention" if i % 2 else "sliding_attention" for i in range(n)), **_GEMMA,
  ),
  "gemma3": dict(
    model_type="gemma3_text", rope_theta=1_000_000.0, local_rope_theta=10_000.0, qk_norm=True, eos_token_ids=(1, 106),
    layer_types=lambda n: tuple("full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)),
    **_GEMMA,
  ),
}  # fmt: skip

# name, family, vocab, embed, mlp, layers, heads, kv heads, head dim, own settings
SIZES = [
  ("tiny", "tiny", 512, 64, 128, 2, 4, 2, 16, {}),  # seconds on any machine: benchmarks' smoke model
  ("smollm2-135m", "smollm2", 49152, 576, 1536, 30, 9, 3, 64, {}),
  ("smollm2-360m", "smollm2", 49152, 960, 2560, 32, 15, 5, 64, {}),
  ("tinyllama-1.1b", "tinyllama", 32000, 2048, 5632, 22, 32, 4, 64, {}),
  ("llama2-7b", "llama2", 32000, 4096, 11008, 32, 32, 32, 128, {}),
  ("llama2-13b", "llama2", 32000, 5120, 13824, 40, 40, 40, 128, {}),
  ("llama3.2-1b", "llama3", 128256, 2048, 8192, 16, 32, 8, 64, dict(rope_scaling=_LLAMA3_2, tie_embeddings=True)),
  ("llama3.1-8b", "llama3", 128256, 4096, 14336, 32, 32, 8, 128, dict(rope_scaling=_LLAMA3_1)),
  ("mistral-7b", "mistral", 32000, 4096, 14336, 32, 32, 8, 128, {}),
  ("qwen2.5-0.5b", "qwen2", 151936, 896, 4864, 24, 14, 2, 64, dict(tie_embeddings=True)),
  ("qwen2.5-7b", "qwen2", 152064, 3584, 18944, 28, 28, 4, 128, {}),
  ("qwen3-0.6b", "qwen3", 151936, 1024, 3072, 28, 16, 8, 128, dict(tie_embeddings=True)),
  ("qwen3-1.7b", "qwen3", 151936, 2048, 6144, 28, 16, 8, 128, dict(tie_embeddings=True)),
  ("qwen3-8b", "qwen3", 151936, 4096, 12288, 36, 32, 8, 128, {}),
  ("phi-3-mini", "phi3", 32064, 3072, 8192, 32, 32, 32, 96, {}),
  ("gemma-2-2b", "gemma2", 256000, 2304, 9216, 26, 8, 4, 256, {}),
  ("gemma-2-9b", "gemma2", 256000, 3584, 14336, 42, 16, 8, 256, {}),
  ("gemma-3-1b", "gemma3", 262144, 1152, 6912, 26, 4, 1, 256, dict(sliding_window=512, max_position_embeddings=32768)),
  ("gemma-3-4b", "gemma3", 262208, 2560, 10240, 34, 8, 4, 256,
   dict(sliding_window=1024, rope_scaling=RopeScaling("linear", 8.0), max_position_embeddings=131072)),
]  # fmt: skip


def _preset(family: str, vocab, embed, mlp, layers, heads, kv_heads, head_dim, own: dict) -> ModelConfig:
  shared = {k: v(layers) if callable(v) else v for k, v in FAMILIES[family].items()}
  model_type = shared.pop("model_type")
  return ModelConfig(model_type, vocab, embed, mlp, layers, heads, kv_heads, head_dim, **shared, **own)


PRESETS: dict[str, ModelConfig] = {name: _preset(*row) for name, *row in SIZES}


def get_preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
  return dataclasses.replace(PRESETS[name], **overrides)
