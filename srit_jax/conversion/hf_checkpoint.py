"""Hugging Face checkpoint directories <-> our parameter tree.

Loading builds the target tree abstractly (`jax.eval_shape`), checks every tensor name and
shape against the table in `mapping.py` before reading any data, then reads one parameter
at a time (per-layer tensors stacked on the host) and places it straight into its target
sharding. Only safetensors are read: pickled `.bin` checkpoints are refused.
"""

from __future__ import annotations

import collections
import json
import math
import pathlib
from collections.abc import Iterator
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
import tqdm
from flax import linen as nn
from jax.sharding import Mesh

from srit_jax import host_cache, io, sharding
from srit_jax.conversion import hf_config, mapping
from srit_jax.model import decoder as model_lib
from srit_jax.model.config import ModelConfig


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit the model; the message names the tensor."""


class TensorSource(Protocol):
  """Named tensors in Hugging Face naming and layout, read one at a time."""

  def names(self) -> list[str]: ...

  def shape(self, name: str) -> tuple[int, ...]: ...

  def read(self, name: str) -> np.ndarray: ...

  def location(self, name: str) -> str: ...


class SafetensorsSource:
  """`model.safetensors` or a sharded `model.safetensors.index.json` in a directory."""

  def __init__(self, directory: str | pathlib.Path):
    self.directory = pathlib.Path(directory)
    index = self.directory / "model.safetensors.index.json"
    single = self.directory / "model.safetensors"
    self._handles: dict[pathlib.Path, object] = {}
    if index.exists():
      try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
      except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index}: not a safetensors index ({e!r})") from None
      self._file_of = {name: self.directory / file for name, file in weight_map.items()}
      names_in = {path: set(self._open(path).keys()) for path in set(self._file_of.values())}
      for name, path in self._file_of.items():
        if name not in names_in[path]:
          raise CheckpointError(f"{index}: tensor {name!r} is listed in {path.name} but that file lacks it")
    elif single.exists():
      self._file_of = {name: single for name in self._open(single).keys()}
    else:
      pickled = sorted(p.name for p in self.directory.glob("*.bin"))
      hint = f" ({', '.join(pickled)} are pickle files, which are never read)" if pickled else ""
      raise CheckpointError(f"{self.directory}: no model.safetensors or model.safetensors.index.json{hint}")

  def _open(self, path: pathlib.Path):
    if path not in self._handles:
      if not path.exists():
        raise CheckpointError(f"{path}: file is missing")
      try:
        self._handles[path] = safetensors.safe_open(str(path), framework="numpy")
      except Exception as e:  # safetensors raises its own error types for every malformed file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    return self._handles[path]

  def names(self) -> list[str]:
    return list(self._file_of)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._open(self._file_of[name]).get_slice(name).get_shape())

  def read(self, name: str) -> np.ndarray:
    path = self._file_of[name]
    try:
      return self._open(path).get_tensor(name)
    except Exception as e:
      raise CheckpointError(f"{path}: tensor {name!r} cannot be read ({e})") from None

  def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a tensor, reading only those."""
    path = self._file_of[name]
    try:
      return self._open(path).get_slice(name)[start:stop]
    except Exception as e:
      raise CheckpointError(f"{path}: tensor {name!r} cannot be read ({e})") from None

  def location(self, name: str) -> str:
    return str(self._file_of.get(name, self.directory))


class TableNames:
  """A `TensorSource` under the names of the table: a multimodal checkpoint's language-model
  prefix removed (its other tensors left out), Phi-3's fused tensors seen as their parts."""

  def __init__(self, source: TensorSource, config: ModelConfig, where: str):
    self.source = source
    self._origin: dict[str, tuple[str, int, int]] = {}  # table name -> (source name, first row, end row)
    for name in source.names():
      if name.startswith(mapping.NON_TEXT_PREFIXES):
        continue
      renamed = name
      for prefix, replacement in mapping.LANGUAGE_MODEL_PREFIXES.items():
        if name.startswith(prefix):
          renamed = replacement + name[len(prefix) :]
      per_layer = mapping.layer_suffix(renamed)
      parts = mapping.FUSED_HF_TENSORS.get(per_layer[1]) if per_layer and config.fused_projections else None
      if parts is None:
        self._origin[renamed] = (name, 0, -1)
        continue
      sizes = _fused_rows(config, parts)
      rows = source.shape(name)[0]
      if rows != sum(sizes):
        raise CheckpointError(
          f"{source.location(name)}: fused tensor {name!r} has {rows} rows, expected {sum(sizes)} "
          f"({' + '.join(map(str, sizes))} for {', '.join(parts)})"
        )
      start = 0
      for part, size in zip(parts, sizes):
        self._origin[f"model.layers.{per_layer[0]}.{part}"] = (name, start, start + size)
        start += size

  def names(self) -> list[str]:
    return list(self._origin)

  def shape(self, name: str) -> tuple[int, ...]:
    origin, start, stop = self._origin[name]
    shape = self.source.shape(origin)
    return shape if stop < 0 else (stop - start, *shape[1:])

  def read(self, name: str) -> np.ndarray:
    origin, start, stop = self._origin[name]
    if stop < 0:
      return self.source.read(origin)
    if hasattr(self.source, "read_rows"):
      return self.source.read_rows(origin, start, stop)
    return self.source.read(origin)[start:stop]

  def location(self, name: str) -> str:
    return self.source.location(self._origin.get(name, (name,))[0])


def _fused_rows(config: ModelConfig, parts: tuple[str, ...]) -> list[int]:
  """Rows of a fused tensor that each part takes: its projection's outputs."""
  return [config.projection_shape(part.split(".")[1].removesuffix("_proj"))[1] for part in parts]


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _rules_for(config: ModelConfig, boxed) -> Iterator[tuple[mapping.TensorRule, nn.Partitioned, list[str]]]:
  """Table rows that apply to this model, with their target leaf and Hugging Face names."""
  for rule in mapping.HF_TENSOR_TABLE:
    try:
      leaf = _get(boxed, rule.path)
    except KeyError:
      continue
    layers = range(config.num_layers) if rule.per_layer else [None]
    yield rule, leaf, [rule.hf_name.format(layer=i) for i in layers]


def check_source(source: TensorSource, config: ModelConfig, where: str) -> None:
  """Raises `CheckpointError` for any missing, unused or misshapen tensor, reading no data.

  `source` is under the table's names (`TableNames`)."""
  boxed = model_lib.boxed_param_shapes(config)
  available = set(source.names())
  expected = set()
  for rule, leaf, hf_names in _rules_for(config, boxed):
    shape = leaf.value.shape[1:] if rule.per_layer else leaf.value.shape
    want = mapping.hf_shape(rule.layout, shape)
    for name in hf_names:
      expected.add(name)
      if name not in available:
        raise CheckpointError(f"{where}: tensor {name!r} is missing (needed for {'/'.join(rule.path)})")
      got = source.shape(name)
      if got != want:
        raise CheckpointError(f"{source.location(name)}: tensor {name!r} has shape {got}, expected {want}")
  unused = sorted(n for n in available - expected if not n.endswith(mapping.IGNORED_HF_SUFFIXES))
  if unused:
    listed = ", ".join(repr(n) for n in unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
    raise CheckpointError(f"{where}: unused tensor(s) {listed} do not fit a {config.model_type} model of this config")


def load_params(
  source: TensorSource, config: ModelConfig, mesh: Mesh | None = None, *, where: str = "checkpoint", progress=False
):
  """The parameter tree of `config` from `source`, one parameter on the host at a time."""
  source = TableNames(source, config, where)
  check_source(source, config, where)
  boxed = model_lib.boxed_param_shapes(config)
  if mesh is None:
    mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), jax.devices()[:1])
  params: dict = {}
  rows = list(_rules_for(config, boxed))
  for rule, leaf, hf_names in tqdm.tqdm(rows, desc="loading parameters", disable=not progress, unit="param"):
    shape = leaf.value.shape[1:] if rule.per_layer else leaf.value.shape
    slices = [mapping.to_ours(rule.layout, source.read(name), shape).astype(leaf.value.dtype) for name in hf_names]
    host = np.stack(slices) if rule.per_layer else slices[0]
    del slices
    target = sharding.logical_sharding(leaf.names, leaf.value.shape, mesh)
    _set(params, rule.path, sharding.put_host_array(host, target))
  return params


def load_hf_checkpoint(directory: str | pathlib.Path, mesh: Mesh | None = None, progress=False, **config_overrides):
  """(config, params) from a Hugging Face directory: config.json plus safetensors."""
  config = hf_config.read(directory, **config_overrides)
  source = SafetensorsSource(directory)
  return config, load_params(source, config, mesh, where=str(directory), progress=progress)


def _export_layout(config: ModelConfig) -> list[tuple[str, list[tuple[mapping.TensorRule, nn.Partitioned, int]]]]:
  """(Hugging Face name, [(rule, leaf, layer or -1)]) of every tensor an export writes, in
  writing order; a fused tensor (Phi-3) lists its parts, whose rows it stacks."""
  rules = list(_rules_for(config, model_lib.boxed_param_shapes(config)))
  fused_of = {}
  if config.fused_projections:
    fused_of = {part: fused for fused, parts in mapping.FUSED_HF_TENSORS.items() for part in parts}
  layout, written = [], set()
  for rule, leaf, hf_names in rules:
    suffix = rule.hf_name.removeprefix("model.layers.{layer}.")
    fused = fused_of.get(suffix)
    if fused is None:
      layout += [(name, [(rule, leaf, i if rule.per_layer else -1)]) for i, name in enumerate(hf_names)]
    elif fused not in written:
      written.add(fused)
      parts = [next(r for r in rules if r[0].hf_name.endswith("." + p)) for p in mapping.FUSED_HF_TENSORS[fused]]
      for i in range(config.num_layers):
        layout.append((f"model.layers.{i}.{fused}", [(r, leaf_, i) for r, leaf_, _ in parts]))
  return layout


def hf_tensors(params, config: ModelConfig, dtype=None) -> Iterator[tuple[str, np.ndarray]]:
  """(Hugging Face name, array) for every tensor of `params`; on the host one parameter at a
  time (the parts of a fused tensor together)."""
  host: dict[tuple[str, ...], np.ndarray] = {}
  for name, parts in _export_layout(config):
    paths = {rule.path for rule, _, _ in parts}
    host = {path: array for path, array in host.items() if path in paths}
    arrays = []
    for rule, _, layer in parts:
      if rule.path not in host:
        ours = io.to_host(_get(params, rule.path))
        host[rule.path] = ours if dtype is None else ours.astype(dtype)
      ours = host[rule.path]
      arrays.append(mapping.to_hf(rule.layout, ours if layer < 0 else ours[layer]))
    yield name, np.ascontiguousarray(arrays[0] if len(arrays) == 1 else np.concatenate(arrays))


def save_hf_checkpoint(
  params,
  config: ModelConfig,
  directory: str | pathlib.Path,
  *,
  tokenizer=None,
  dtype: str | None = None,
  max_shard_bytes: int = 5 * 2**30,
) -> pathlib.Path:
  """Writes config.json, safetensors (sharded past `max_shard_bytes`) and tokenizer files.

  Each shard is written as soon as it is full, so the host holds at most one shard (to a local
  directory first when `directory` is remote, then uploaded).
  """
  directory = io.as_path(directory)
  is_writer = io.is_writer()
  dtype = dtype or config.param_dtype
  np_dtype = jnp.dtype(dtype)
  shard_of = _plan_shards(config, np_dtype.itemsize, max_shard_bytes)
  num_shards = max(shard_of.values()) + 1
  tensors_in_shard = collections.Counter(shard_of.values())
  files = [
    "model.safetensors" if num_shards == 1 else f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
    for i in range(num_shards)
  ]
  with (
    io.writing("the model to", directory, also=(safetensors.SafetensorError,)),
    host_cache.staged(directory, "the model to") as local,
  ):
    if is_writer:
      local.mkdir(parents=True, exist_ok=True)
    pending: dict[str, np.ndarray] = {}
    total_bytes = 0
    for name, array in hf_tensors(params, config, np_dtype):
      pending[name] = array
      total_bytes += array.nbytes
      shard = shard_of[name]
      if len(pending) == tensors_in_shard[shard]:
        if is_writer:
          safetensors.numpy.save_file(pending, str(local / files[shard]), metadata={"format": "pt"})
        pending = {}
    if is_writer:
      _write_metadata(local, config, dtype, tokenizer, files, shard_of, total_bytes)
  io.barrier(f"export {directory}")  # no process reads the export before it is whole
  return directory


def _write_metadata(directory, config: ModelConfig, dtype: str, tokenizer, files, shard_of, total_bytes) -> None:
  num_shards = len(files)
  if num_shards > 1:
    index = {"metadata": {"total_size": total_bytes}, "weight_map": {n: files[i] for n, i in shard_of.items()}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
  config_json = dict(hf_config.config_json(config), torch_dtype=dtype)
  (directory / "config.json").write_text(json.dumps(config_json, indent=2) + "\n", encoding="utf-8")
  if tokenizer is not None:
    save_tokenizer(tokenizer, directory)


def save_tokenizer(tokenizer, directory: str | pathlib.Path) -> None:
  """Saves tokenizer files that transformers 4 and 5 both load."""
  directory = pathlib.Path(directory)
  tokenizer.save_pretrained(str(directory))
  config_path = directory / "tokenizer_config.json"
  config = json.loads(config_path.read_text(encoding="utf-8"))
  # transformers 5 writes its own class name, which transformers 4 does not know.
  config["tokenizer_class"] = "PreTrainedTokenizerFast"
  config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _plan_shards(config: ModelConfig, itemsize: int, max_shard_bytes: int) -> dict[str, int]:
  """Shard index of every Hugging Face tensor, in writing order, filling shards greedily."""
  shard_of, shard, used = {}, 0, 0
  for name, parts in _export_layout(config):
    nbytes = sum(math.prod(leaf.value.shape[1:] if layer >= 0 else leaf.value.shape) for _, leaf, layer in parts)
    nbytes *= itemsize
    if used and used + nbytes > max_shard_bytes:
      shard, used = shard + 1, 0
    shard_of[name] = shard
    used += nbytes
  return shard_of
