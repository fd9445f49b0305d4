"""GGUF files (llama.cpp) -> Hugging Face tensor names, our config, and a `tokenizers` tokenizer.

Tensors are dequantised with the `gguf` package. llama.cpp stores the q/k projection rows
of Llama-architecture models permuted for its interleaved rotary layout; `unpermute_qk`
undoes that so the weights match Hugging Face's rotate-half layout.
"""

from __future__ import annotations

import pathlib
import re

import gguf
import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from srit_jax.conversion.hf_checkpoint import CheckpointError
from srit_jax.conversion.hf_config import check_architecture
from srit_jax.model.config import ModelConfig

_GLOBAL_NAMES = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
  "attn_norm.weight": "input_layernorm.weight",
  "attn_q.weight": "self_attn.q_proj.weight",
  "attn_k.weight": "self_attn.k_proj.weight",
  "attn_v.weight": "self_attn.v_proj.weight",
  "attn_q.bias": "self_attn.q_proj.bias",
  "attn_k.bias": "self_attn.k_proj.bias",
  "attn_v.bias": "self_attn.v_proj.bias",
  "attn_q_norm.weight": "self_attn.q_norm.weight",
  "attn_k_norm.weight": "self_attn.k_norm.weight",
  "attn_output.weight": "self_attn.o_proj.weight",
  "ffn_norm.weight": "post_attention_layernorm.weight",
  "ffn_gate.weight": "mlp.gate_proj.weight",
  "ffn_up.weight": "mlp.up_proj.weight",
  "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
# llama.cpp permutes q/k rows only for these architectures.
_PERMUTED_ARCHITECTURES = ("llama",)
# Gemma's GGUF files carry a SentencePiece vocabulary, which `build_tokenizer` does not build.
SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")


def hf_name(gguf_name: str) -> str | None:
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  match = _LAYER_RE.fullmatch(gguf_name)
  if match and match.group(2) in _LAYER_NAMES:
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
  return None


def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute`: per head, interleaved (re, im) rows back to two halves."""
  half_head_dim = weight.shape[0] // num_heads // 2
  return weight.reshape(num_heads, half_head_dim, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def permute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
  """llama.cpp's `permute` (used by tests to write GGUF files as llama.cpp does)."""
  half_head_dim = weight.shape[0] // num_heads // 2
  return weight.reshape(num_heads, 2, half_head_dim, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class GgufFile:
  """A GGUF file read through `gguf.GGUFReader` (memory-mapped)."""

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    try:
      self.reader = gguf.GGUFReader(str(self.path))
    except Exception as e:  # the reader raises ValueError, struct.error or IndexError on bad bytes
      raise CheckpointError(f"{self.path}: not a readable GGUF file ({e})") from None
    self.architecture = self.field("general.architecture")
    if self.architecture not in SUPPORTED_GGUF_ARCHITECTURES:
      raise CheckpointError(
        f"{self.path}: field 'general.architecture' is {self.architecture!r}; "
        f"supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)}"
      )

  def field(self, key: str, default=None, required=True):
    field = self.reader.fields.get(key)
    if field is None:
      if required and default is None:
        raise CheckpointError(f"{self.path}: metadata field {key!r} is missing")
      return default
    value = field.contents()
    return value.item() if isinstance(value, np.generic) else value  # NumPy scalars as Python numbers

  def arch_field(self, key: str, default=None):
    return self.field(f"{self.architecture}.{key}", default)

  def model_config(self, **overrides) -> ModelConfig:
    """The architecture from the file's metadata, each field checked before any array is built."""
    tokens = self.field("tokenizer.ggml.tokens", required=False) or []
    arch = self.architecture
    tensor_names = {t.name for t in self.reader.tensors}
    key_length = self.arch_field("attention.key_length", -1)
    eos = self.field("tokenizer.ggml.eos_token_id", required=False)
    fields = dict(
      vocab_size=self.arch_field("vocab_size", len(tokens) or None),
      embed_dim=self.arch_field("embedding_length"),
      mlp_dim=self.arch_field("feed_forward_length"),
      num_layers=self.arch_field("block_count"),
      num_heads=self.arch_field("attention.head_count"),
      rms_norm_eps=self.arch_field("attention.layer_norm_rms_epsilon", 1e-5),
      rope_theta=self.arch_field("rope.freq_base", 10_000.0),
      max_position_embeddings=self.arch_field("context_length", 4096),
      bos_token_id=self.field("tokenizer.ggml.bos_token_id", required=False),
      eos_token_ids=(eos,) if eos is not None else (),
      pad_token_id=self.field("tokenizer.ggml.padding_token_id", required=False),
    )
    fields["num_kv_heads"] = self.arch_field("attention.head_count_kv", fields["num_heads"])
    whole = all(isinstance(fields[k], int) and fields[k] > 0 for k in ("embed_dim", "num_heads"))
    fields["head_dim"] = key_length if key_length != -1 else fields["embed_dim"] // fields["num_heads"] if whole else 0
    names = {
      "vocab_size": f"{arch}.vocab_size", "embed_dim": f"{arch}.embedding_length",
      "mlp_dim": f"{arch}.feed_forward_length", "num_layers": f"{arch}.block_count",
      "num_heads": f"{arch}.attention.head_count", "num_kv_heads": f"{arch}.attention.head_count_kv",
      "head_dim": f"{arch}.attention.key_length", "rms_norm_eps": f"{arch}.attention.layer_norm_rms_epsilon",
      "rope_theta": f"{arch}.rope.freq_base", "max_position_embeddings": f"{arch}.context_length",
      "bos_token_id": "tokenizer.ggml.bos_token_id", "eos_token_ids": "tokenizer.ggml.eos_token_id",
      "pad_token_id": "tokenizer.ggml.padding_token_id",
    }  # fmt: skip
    check_architecture(fields, str(self.path), names, head_dim_given=key_length != -1)
    return ModelConfig(
      model_type=arch,
      **fields,
      tie_embeddings="output.weight" not in tensor_names,
      qkv_bias="blk.0.attn_q.bias" in tensor_names,
      qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
      **overrides,
    )


class GgufSource:
  """The tensors of a GGUF file under Hugging Face names and layouts (a `TensorSource`)."""

  def __init__(self, file: GgufFile, config: ModelConfig):
    self.file = file
    self.config = config
    self._tensors = {}
    for tensor in file.reader.tensors:
      name = hf_name(tensor.name)
      if name is None:
        raise CheckpointError(f"{file.path}: tensor {tensor.name!r} has no Hugging Face counterpart")
      self._tensors[name] = tensor

  def names(self) -> list[str]:
    return list(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(int(d) for d in reversed(self._tensors[name].shape))

  def read(self, name: str) -> np.ndarray:
    tensor = self._tensors[name]
    weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(self.shape(name))
    if self.file.architecture in _PERMUTED_ARCHITECTURES:
      if ".q_proj." in name:
        weight = unpermute_qk(weight, self.config.num_heads)
      elif ".k_proj." in name:
        weight = unpermute_qk(weight, self.config.num_kv_heads)
    return weight

  def location(self, name: str) -> str:
    return f"{self.file.path} ({self._tensors[name].name})" if name in self._tensors else str(self.file.path)


# How llama.cpp's `tokenizer.ggml.pre` names split text before byte-level BPE.
_LLAMA3_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(kind: str | None, where: str):
  byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
  if kind in (None, "default", "gpt2"):
    return byte_level
  if kind == "smollm":  # as SmolLM2's own tokenizer.json: digits one by one, then GPT-2 splitting
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
  split = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}.get(kind)
  if split is None:
    raise CheckpointError(f"{where}: field 'tokenizer.ggml.pre' is {kind!r}, which this converter does not know")
  return pre_tokenizers.Sequence(
    [
      pre_tokenizers.Split(Regex(split), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ]
  )


_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def build_tokenizer(file: GgufFile):
  """A `transformers` fast tokenizer rebuilt from the GGUF vocabulary, merges and template."""
  from transformers import PreTrainedTokenizerFast

  where = str(file.path)
  kind = file.field("tokenizer.ggml.model")
  if kind != "gpt2":
    raise CheckpointError(f"{where}: field 'tokenizer.ggml.model' is {kind!r}; only byte-level BPE ('gpt2') is built")
  tokens = list(file.field("tokenizer.ggml.tokens"))
  token_types = list(file.field("tokenizer.ggml.token_type", required=False) or [1] * len(tokens))
  merges = [tuple(m.split(" ", 1)) for m in file.field("tokenizer.ggml.merges")]
  backend = Tokenizer(
    models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False, byte_fallback=False)
  )
  backend.pre_tokenizer = _pre_tokenizer(file.field("tokenizer.ggml.pre", required=False), where)
  backend.decoder = decoders.ByteLevel()
  backend.post_processor = processors.ByteLevel(trim_offsets=False)
  backend.add_special_tokens(
    [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, token_types) if k == _CONTROL]
  )
  backend.add_tokens(
    [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, token_types) if k == _USER_DEFINED]
  )

  def token(key):
    index = file.field(f"tokenizer.ggml.{key}_token_id", required=False)
    return tokens[index] if index is not None else None

  tokenizer = PreTrainedTokenizerFast(
    tokenizer_object=backend,
    bos_token=token("bos"),
    eos_token=token("eos"),
    unk_token=token("unknown"),
    pad_token=token("padding"),
    add_bos_token=bool(file.field("tokenizer.ggml.add_bos_token", required=False)),
    clean_up_tokenization_spaces=False,
  )
  template = file.field("tokenizer.chat_template", required=False)
  if template:
    tokenizer.chat_template = template
  return tokenizer


def load_gguf(path: str | pathlib.Path, mesh=None, progress=False, **config_overrides):
  """(config, params, tokenizer) from a GGUF file, dequantised to `param_dtype`."""
  from srit_jax.conversion import hf_checkpoint

  file = GgufFile(path)
  config = file.model_config(**config_overrides)
  params = hf_checkpoint.load_params(GgufSource(file, config), config, mesh, where=str(file.path), progress=progress)
  return config, params, build_tokenizer(file)
