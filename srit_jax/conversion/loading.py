"""Load a model by name, Hugging Face directory or GGUF file: the notebook entry point.

>>> import srit_jax
>>> model = srit_jax.load_model("smollm2-135m-instruct")
>>> logits = model.logits(model.tokenizer("Hello")["input_ids"])
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from srit_jax import host_cache, io, sharding
from srit_jax.conversion import fetch, gguf_checkpoint, hf_checkpoint, hf_config
from srit_jax.data import fingerprint
from srit_jax.model import decoder as model_lib
from srit_jax.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  config: ModelConfig
  params: Any
  tokenizer: Any  # a transformers tokenizer, or None when the source has none
  mesh: Mesh | None = None
  source: str = ""  # the file or directory it was read from
  adapters: Any = None  # LoRA adapters over `params` (then a frozen base), or None
  adapter_source: str = ""  # the PEFT adapter directory they were read from, if any

  @functools.cached_property
  def identity(self) -> str:
    """A digest of the files it was read from (for fingerprints of what it generates)."""
    parts = [fingerprint.source_digest(self.source) if self.source else ""]
    if self.adapters is not None:  # fresh adapters are the base; read ones are their files
      parts.append(fingerprint.source_digest(self.adapter_source) if self.adapter_source else "fresh adapters")
    return parts[0] if len(parts) == 1 else fingerprint.digest(*parts)

  def logits(self, tokens_BxT, positions_BxT=None, segment_ids_BxT=None) -> jax.Array:
    """Logits [B, T, V] for token ids (a list of ids or a [B, T] array)."""
    tokens = np.asarray(tokens_BxT, np.int32)
    if tokens.ndim == 1:
      tokens = tokens[None]
    return model_lib.forward(
      self.config, self.params, jnp.asarray(tokens), positions_BxT, segment_ids_BxT, self.mesh, self.adapters
    )


def load_model(
  source: str | pathlib.Path,
  *,
  mesh: Mesh | None = None,
  dtype: str = "float32",
  param_dtype: str = "float32",
  remat_policy: str = "none",
  attention: str = "auto",
  lora=None,
  progress: bool = False,
) -> LoadedModel:
  """A model from a known name (fetched on first use), an HF directory, a `.gguf` file or a hub id.

  With `lora` (a config's `lora` block with rank > 0) the model is a frozen base — stored in
  `lora.base_dtype`, quantized by `lora.base_quantization` — under LoRA adapters: fresh ones
  (B = 0), or `lora.init_adapter`'s (a PEFT adapter directory, whose rank, alpha and targets
  then apply).
  """
  overrides = dict(dtype=dtype, param_dtype=param_dtype, remat_policy=remat_policy, attention=attention)
  settings = lora_settings(lora)
  if settings:
    overrides["param_dtype"] = settings.get("base_dtype") or param_dtype  # the base is read in its storage dtype
  config, params, tokenizer, path = _load_plain(source, mesh, progress, overrides)
  if not settings:
    return LoadedModel(config, params, tokenizer, mesh, str(path))
  from srit_jax.conversion import peft
  from srit_jax.model import decoder
  from srit_jax.model import lora as lora_lib

  init_adapter = settings.pop("init_adapter", "")
  if init_adapter:
    found = peft.read_adapter_config(init_adapter)
    settings.update(lora_rank=found["rank"], lora_alpha=found["alpha"], lora_targets=found["targets"])
  config = dataclasses.replace(config, param_dtype=param_dtype, **settings)
  if config.base_quantization != "none":
    shardings = sharding.tree_shardings(decoder.boxed_param_shapes(config), mesh) if mesh is not None else None
    params = jax.jit(lambda p: lora_lib.quantize_base(p, config), out_shardings=shardings)(params)
  if init_adapter:
    adapters = peft.load_peft_adapter(init_adapter, config, mesh)
  else:
    adapters = decoder.init_adapters(config, jax.random.key(0), mesh)
  return LoadedModel(config, params, tokenizer, mesh, str(path), adapters, str(init_adapter))


def lora_settings(lora) -> dict:
  """ModelConfig fields of a config's `lora` block ({} when it asks for no adapters)."""
  if lora is None or not lora.get("rank"):
    return {}
  targets = lora.targets if not isinstance(lora.targets, str) else lora.targets.split(",")
  return {
    "lora_rank": int(lora.rank),
    "lora_alpha": float(lora.alpha),
    "lora_targets": tuple(t.strip() for t in targets if t.strip()),
    "lora_dropout": float(lora.dropout),
    "base_dtype": lora.base_dtype,
    "base_quantization": lora.base_quantization,
    "init_adapter": lora.get("init_adapter", ""),
  }


def _load_plain(source, mesh, progress, overrides):
  """(config, params, tokenizer, path) of a model as its checkpoint holds it."""
  source_str = str(source)
  if source_str in fetch.KNOWN_MODELS and not pathlib.Path(source_str).exists():
    source = fetch.fetch_model(source_str)
  path = host_cache.local_copy(source)  # a gs:// model: this host's cached copy
  if not path.exists() and is_hub_id(source_str):
    path = download_from_hub(source_str)
  if path.suffix == ".gguf":
    config, params, tokenizer = gguf_checkpoint.load_gguf(path, mesh, progress=progress, **overrides)
    return config, params, tokenizer, path
  if not path.is_dir():
    raise FileNotFoundError(
      f"{path}: not a directory, a .gguf file or a known model name ({', '.join(fetch.KNOWN_MODELS)})"
    )
  config, params = hf_checkpoint.load_hf_checkpoint(path, mesh, progress=progress, **overrides)
  return config, params, _tokenizer_in(path), path


# Architectures of well-known hub models and the known PyPI name, so that planning a run (which
# needs shapes only) works offline. Anything else is read from its config.json.
PRESET_OF_SOURCE = {
  "smollm2-135m-instruct": "smollm2-135m",
  "HuggingFaceTB/SmolLM2-135M-Instruct": "smollm2-135m",
  "HuggingFaceTB/SmolLM2-360M-Instruct": "smollm2-360m",
  "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "tinyllama-1.1b",
  "meta-llama/Llama-2-7b-hf": "llama2-7b",
  "meta-llama/Llama-2-7b-chat-hf": "llama2-7b",
  "meta-llama/Llama-2-13b-hf": "llama2-13b",
  "meta-llama/Llama-2-13b-chat-hf": "llama2-13b",
  "meta-llama/Llama-3.2-1B-Instruct": "llama3.2-1b",
  "meta-llama/Llama-3.1-8B": "llama3.1-8b",
  "meta-llama/Llama-3.1-8B-Instruct": "llama3.1-8b",
  "mistralai/Mistral-7B-v0.1": "mistral-7b",
  "Qwen/Qwen2.5-0.5B-Instruct": "qwen2.5-0.5b",
  "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b",
  "Qwen/Qwen3-0.6B": "qwen3-0.6b",
  "Qwen/Qwen3-1.7B": "qwen3-1.7b",
  "Qwen/Qwen3-8B": "qwen3-8b",
  "Qwen/Qwen3-8B-Base": "qwen3-8b",
  "microsoft/Phi-3-mini-4k-instruct": "phi-3-mini",
  "google/gemma-2-2b": "gemma-2-2b",
  "google/gemma-2-2b-it": "gemma-2-2b",
  "google/gemma-2-9b": "gemma-2-9b",
  "google/gemma-2-9b-it": "gemma-2-9b",
  "google/gemma-3-1b-it": "gemma-3-1b",
  "google/gemma-3-1b-pt": "gemma-3-1b",
  "google/gemma-3-4b-it": "gemma-3-4b",
  "google/gemma-3-4b-pt": "gemma-3-4b",
}


def model_config_of(source: str | pathlib.Path, **overrides) -> ModelConfig:
  """The architecture of a model without reading its weights: an HF directory's config.json, a
  GGUF file's header, a preset name, a known hub id, else the hub's config.json."""
  from srit_jax.model.presets import PRESETS, get_preset

  source_str = str(source)
  path = io.as_path(source_str)
  if io.is_remote(path) and path.is_dir():
    return hf_config.read(host_cache.local_copy(path / "config.json"), **overrides)
  path = host_cache.local_copy(path) if io.is_remote(path) and path.is_file() else path
  if path.is_dir():
    return hf_config.read(path, **overrides)
  if path.suffix == ".gguf" and path.is_file():
    return gguf_checkpoint.GgufFile(path).model_config(**overrides)
  preset = PRESET_OF_SOURCE.get(source_str.split("@")[0], source_str if source_str in PRESETS else None)
  if preset is not None:
    return get_preset(preset, **overrides)
  if is_hub_id(source_str):
    from huggingface_hub import hf_hub_download

    repo_id, _, revision = source_str.partition("@")
    try:
      return hf_config.read(hf_hub_download(repo_id, "config.json", revision=revision or None), **overrides)
    except Exception as e:  # offline, missing, gated
      raise FileNotFoundError(f"{source_str}: its config.json could not be had from the hub or its cache: {e}") from e
  raise FileNotFoundError(f"{source_str}: not a directory, a .gguf file, a preset or a hub id")


def is_hub_id(source: str) -> bool:
  """ "org/name" (optionally "org/name@revision"), as the Hugging Face hub names models."""
  return re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", source) is not None


def download_from_hub(repo: str) -> pathlib.Path:
  """The config, tokenizer and safetensors of a hub model (its local cache copy when there is one).

  Only safetensors are fetched (never pickled weights); gated models need HF_TOKEN.
  """
  from huggingface_hub import snapshot_download

  repo_id, _, revision = repo.partition("@")
  try:
    directory = snapshot_download(
      repo_id,
      revision=revision or None,
      allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"],
    )
  except Exception as e:  # offline, missing, gated: say which model and why
    raise FileNotFoundError(f"{repo}: could not be had from the Hugging Face hub or its cache: {e}") from e
  return pathlib.Path(directory)


def _tokenizer_in(directory: pathlib.Path):
  if not (directory / "tokenizer.json").exists() and not (directory / "tokenizer.model").exists():
    return None
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)
