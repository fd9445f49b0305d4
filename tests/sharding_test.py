"""Sharded loading on 8 emulated devices: same logits, and every parameter where its axes say."""

import os
import types

import jax
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec

from srit_jax import sharding
from srit_jax.conversion import hf_checkpoint
from srit_jax.model import decoder as model_lib
from srit_jax.planning import topology

TOKENS = np.random.default_rng(0).integers(3, 128, size=(8, 12)).astype(np.int32)


@pytest.mark.parametrize(
  "family, mesh_config",
  [
    ("llama", sharding.MeshConfig(2, 2, 2)),
    ("llama", sharding.MeshConfig(1, 8, 1)),
    ("gemma2", sharding.MeshConfig(2, 2, 2)),
    ("qwen3", sharding.MeshConfig(2, 2, 2)),
  ],
)
def test_sharded_load_gives_single_device_logits(hf_model_dir, family, mesh_config):
  assert jax.device_count() == 8
  directory, _ = hf_model_dir(family)
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  mesh = sharding.make_mesh(mesh_config)
  _, sharded = hf_checkpoint.load_hf_checkpoint(directory, mesh=mesh)
  single = np.asarray(model_lib.forward(config, params, TOKENS))
  tokens = jax.device_put(TOKENS, sharding.logical_sharding(("batch", "length"), TOKENS.shape, mesh))
  on_mesh = model_lib.forward(config, sharded, tokens, mesh=mesh)
  np.testing.assert_allclose(np.asarray(on_mesh), single, atol=1e-5, rtol=1e-5)  # float32 sums in another order


def test_every_parameter_carries_the_sharding_its_logical_axes_name(hf_model_dir):
  directory, _ = hf_model_dir("llama")  # 4 heads, 2 kv heads, 48 embed, 80 mlp, 128 vocab: all even
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  config, params = hf_checkpoint.load_hf_checkpoint(directory, mesh=mesh)
  expected_mesh_axis = {"embed": "fsdp", "vocab": "tensor", "mlp": "tensor", "q_heads": "tensor", "kv_heads": "tensor"}
  boxed = model_lib.boxed_param_shapes(config)
  flat_boxed = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  flat_params = dict(jax.tree_util.tree_leaves_with_path(params))
  assert len(flat_boxed) == len(flat_params)
  for path, leaf in flat_boxed:
    want = PartitionSpec(*(expected_mesh_axis.get(name) for name in leaf.names))
    got = flat_params[path].sharding
    assert got.mesh.shape == mesh.shape
    assert got.spec == want, f"{jax.tree_util.keystr(path)}: {got.spec} != {want} for axes {leaf.names}"
    # Each device holds only its shard.
    shard_shape = got.shard_shape(flat_params[path].shape)
    assert flat_params[path].addressable_shards[0].data.shape == shard_shape


def test_axes_that_do_not_divide_a_dimension_are_replicated():
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  # SmolLM2: 9 query heads and 3 kv heads cannot be split two ways; the embed dim (576) can.
  spec = sharding.logical_to_spec(("layers", "embed", "q_heads", "head_dim"), (30, 576, 9, 64), mesh)
  assert spec == PartitionSpec(None, "fsdp", None, None)
  assert sharding.logical_to_spec(("batch", "length"), (8, 5), mesh) == PartitionSpec(("data", "fsdp"), None)
  assert sharding.logical_to_spec(("batch", "length"), (2, 5), mesh) == PartitionSpec("data", None)


def test_make_mesh_fills_one_axis_and_rejects_impossible_shapes():
  assert dict(sharding.make_mesh(sharding.MeshConfig(2, -1, 2)).shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match="needs 12 devices"):
    sharding.make_mesh(sharding.MeshConfig(3, 2, 2))
  with pytest.raises(ValueError, match="cannot be split"):
    sharding.make_mesh(sharding.MeshConfig(3, -1, 1))


def test_a_mesh_that_leaves_a_process_without_devices_is_a_one_line_error(monkeypatch):
  # Two processes of 4 devices each (process_index as jax.distributed gives it), a mesh of 4.
  devices = [types.SimpleNamespace(id=i, process_index=i // 4) for i in range(8)]
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  with pytest.raises(ValueError, match=r"uses 4 of 8 devices, none of process 1: with 2 processes"):
    sharding.make_mesh(sharding.MeshConfig(1, 4, 1), devices)
  # One process: a mesh may take its first devices.
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  assert dict(sharding.make_mesh(sharding.MeshConfig(1, 4, 1)).shape) == {"data": 1, "fsdp": 4, "tensor": 1}


def test_init_params_on_a_mesh_are_created_sharded():
  config = model_lib.ModelConfig("llama", 64, 32, 48, 2, 4, 2, 8)
  mesh = sharding.make_mesh(sharding.MeshConfig(1, 4, 2))
  params = model_lib.init_params(config, jax.random.key(0), mesh)
  kernel = params["layers"]["mlp"]["gate_proj"]["kernel"]
  assert kernel.sharding.spec == PartitionSpec(None, "fsdp", "tensor")
  single = model_lib.init_params(config, jax.random.key(0))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), params, single)


@pytest.mark.parametrize(
  ("given", "expected"),
  [
    (
      "--xla_force_host_platform_device_count=8",
      "--xla_force_host_platform_device_count=8 --xla_cpu_multi_thread_eigen=false",
    ),
    (
      "--xla_force_host_platform_device_count=1",
      "--xla_force_host_platform_device_count=1",
    ),  # one device: no pool to wedge
    ("", ""),
    (  # the user's own choice stands
      "--xla_force_host_platform_device_count=4 --xla_cpu_multi_thread_eigen=true",
      "--xla_force_host_platform_device_count=4 --xla_cpu_multi_thread_eigen=true",
    ),
  ],
)
def test_ops_run_in_their_devices_thread_only_on_several_emulated_devices(monkeypatch, given, expected):
  monkeypatch.setenv("XLA_FLAGS", given)
  topology.single_threaded_ops_on_emulated_devices()
  assert os.environ["XLA_FLAGS"] == expected
