"""LoRA adapters in and out of PEFT's format: `adapter_config.json` and `adapter_model.safetensors`
with PEFT's tensor names, which `peft.PeftModel.from_pretrained` loads onto the Hugging Face
base model, and which this project imports as a starting point.

PEFT keeps, per adapted linear layer of a Llama-family model,
`base_model.model.model.layers.{i}.{self_attn|mlp}.{name}_proj.lora_A.weight` [r, in] and
`...lora_B.weight` [out, r], with the update (alpha / r)·B·A applied to the [out, in] weight.
Ours are A [in..., r] and B [r, out...] in the base kernel's layout [in..., out...], so
A_peft = A.reshape(in, r).T and B_peft = B.reshape(r, out).T.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import safetensors.numpy

from srit_jax import io, sharding
from srit_jax.model import decoder
from srit_jax.model.config import LORA_TARGETS, ModelConfig
from srit_jax.model.lora import PROJECTIONS

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_HF_BLOCK = {"attention": "self_attn", "mlp": "mlp"}


class AdapterError(ValueError):
  """An adapter directory that does not fit the model; the message names the file and tensor."""


def _name(layer: int, block: str, target: str, which: str) -> str:
  return f"base_model.model.model.layers.{layer}.{_HF_BLOCK[block]}.{target}_proj.lora_{which}.weight"


def save_peft_adapter(adapters, config: ModelConfig, directory: str | pathlib.Path, *, base_model: str) -> pathlib.Path:
  """Writes `adapters` as a PEFT LoRA adapter of `base_model` (process 0 writes)."""
  directory = io.as_path(directory)
  if config.fused_projections:
    raise AdapterError(
      f"{directory}: a {config.model_type} checkpoint fuses q/k/v and gate/up, so adapters on its separate "
      "projections have no PEFT names; export the merged model instead"
    )
  tensors = {}
  for block, target, _ in PROJECTIONS:
    if target not in config.lora_targets:
      continue
    module = adapters["layers"][block][f"{target}_proj"]
    a, b = io.to_host(module["lora_a"]), io.to_host(module["lora_b"])  # [L, in..., r], [L, r, out...]
    for layer in range(a.shape[0]):
      tensors[_name(layer, block, target, "A")] = np.ascontiguousarray(a[layer].reshape(-1, config.lora_rank).T)
      tensors[_name(layer, block, target, "B")] = np.ascontiguousarray(b[layer].reshape(config.lora_rank, -1).T)
  adapter_config = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "base_model_name_or_path": base_model,
    "r": config.lora_rank,
    "lora_alpha": config.lora_alpha,
    "lora_dropout": config.lora_dropout,
    "target_modules": [f"{t}_proj" for t in config.lora_targets],
    "bias": "none",
    "fan_in_fan_out": False,
    "inference_mode": True,
    "init_lora_weights": True,
    "modules_to_save": None,
    "use_rslora": False,
    "use_dora": False,
    "layers_to_transform": None,
    "layers_pattern": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "revision": None,
  }
  if io.is_writer():
    with io.writing("the adapter to", directory, also=(safetensors.SafetensorError,)):
      io.write_bytes(directory / ADAPTER_WEIGHTS, safetensors.numpy.save(tensors, metadata={"format": "pt"}))
  io.write_json(directory / ADAPTER_CONFIG, adapter_config)
  io.barrier(f"adapter {directory}")
  return directory


def read_adapter_config(directory: str | pathlib.Path) -> dict:
  """The LoRA settings of a PEFT adapter directory, checked."""
  path = io.as_path(directory) / ADAPTER_CONFIG
  if not path.is_file():
    raise AdapterError(f"{directory}: no {ADAPTER_CONFIG}: not a PEFT adapter directory")
  try:
    config = json.loads(io.read_text(path))
  except json.JSONDecodeError as e:
    raise AdapterError(f"{path}: not valid JSON ({e.msg})") from None
  if config.get("peft_type") != "LORA":
    raise AdapterError(f"{path}: field 'peft_type' is {config.get('peft_type')!r}; only LORA adapters are read")
  if not isinstance(config, dict):
    raise AdapterError(f"{path}: expected a JSON object, got {type(config).__name__}")
  rank, alpha = config.get("r"), config.get("lora_alpha")
  if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
    raise AdapterError(f"{path}: field 'r' is {rank!r}; expected a positive integer")
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
    raise AdapterError(f"{path}: field 'lora_alpha' is {alpha!r}; expected a positive number")
  dropout = config.get("lora_dropout", 0.0)
  if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
    raise AdapterError(f"{path}: field 'lora_dropout' is {dropout!r}; expected a number in [0, 1)")
  targets = config.get("target_modules") or []
  if isinstance(targets, str):
    raise AdapterError(f"{path}: field 'target_modules' is a pattern ({targets!r}); a list of module names is read")
  if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
    raise AdapterError(f"{path}: field 'target_modules' is {targets!r}; expected a list of module names")
  names = [t.removesuffix("_proj") for t in targets]
  unknown = [t for t, n in zip(targets, names) if n not in LORA_TARGETS]
  if unknown:
    raise AdapterError(f"{path}: field 'target_modules' names {unknown}, which this model does not have")
  for field in ("use_dora", "use_rslora"):
    if config.get(field):
      raise AdapterError(f"{path}: field {field!r} is true; plain LoRA adapters only")
  return {"rank": rank, "alpha": float(alpha), "targets": tuple(names)}


def load_peft_adapter(directory: str | pathlib.Path, config: ModelConfig, mesh=None):
  """Adapters from a PEFT directory for a model of `config` (whose rank, alpha and targets must
  be the adapter's), each tensor checked against its expected shape and put in its sharding."""
  directory = io.as_path(directory)
  path = directory / ADAPTER_WEIGHTS
  if not path.is_file():
    raise AdapterError(f"{directory}: no {ADAPTER_WEIGHTS}")
  tensors = safetensors.numpy.load(path.read_bytes())
  boxed = decoder.boxed_adapter_shapes(config)
  adapters: dict = {"layers": {}}
  for block, target, _ in PROJECTIONS:
    if target not in config.lora_targets:
      continue
    module = {}
    for which, key in (("A", "lora_a"), ("B", "lora_b")):
      leaf = boxed["layers"][block][f"{target}_proj"][key]
      shape, layers = leaf.value.shape, leaf.value.shape[0]
      per_layer = []
      for layer in range(layers):
        name = _name(layer, block, target, which)
        if name not in tensors:
          raise AdapterError(f"{path}: tensor {name!r} is missing")
        tensor = tensors[name]
        flat = (int(np.prod(shape[1:-1])), shape[-1]) if which == "A" else (shape[1], int(np.prod(shape[2:])))
        expected = flat[::-1]
        if tensor.shape != expected:
          raise AdapterError(
            f"{path}: tensor {name!r} has shape {list(tensor.shape)}, expected {list(expected)} for this model"
          )
        per_layer.append(tensor.T.reshape(shape[1:]))
      array = np.stack(per_layer).astype(leaf.value.dtype)
      target_sharding = sharding.logical_sharding(leaf.names, shape, mesh) if mesh is not None else None
      module[key] = sharding.put_host_array(array, target_sharding) if mesh is not None else jax.numpy.asarray(array)
    adapters["layers"].setdefault(block, {})[f"{target}_proj"] = module
  extra = [n for n in tensors if f".layers.{config.num_layers}." in n]
  if extra:
    raise AdapterError(f"{path}: tensor {extra[0]!r} is for a deeper model than this one ({config.num_layers} layers)")
  return adapters
