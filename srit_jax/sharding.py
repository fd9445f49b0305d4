"""Device mesh, the one table of logical-axis rules, and helpers that place trees on it.

Every parameter and key activation carries logical axis names ("embed", "mlp", ...);
`LOGICAL_AXIS_RULES` maps each to mesh axes. A mesh axis that does not divide a dimension
is dropped for that array (it is replicated along that axis instead), so that models with
head counts such as 9 or 3 still load on a 2-way tensor mesh.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  # Parameters.
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("q_heads", "tensor"),
  ("kv_heads", "tensor"),
  ("head_dim", None),
  ("norm", None),
  ("layers", None),
  # Activations and the KV cache.
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("act_embed", None),
  ("act_heads", "tensor"),
  ("act_kv_heads", "tensor"),
  ("act_mlp", "tensor"),
  ("act_vocab", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Sizes of the mesh axes; one of them may be -1 to take the remaining devices.

  Without a -1, a mesh smaller than the device count uses the first devices.
  """

  data: int = 1
  fsdp: int = -1
  tensor: int = 1


def make_mesh(config: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  config = config or MeshConfig()
  devices = list(devices if devices is not None else jax.devices())
  sizes = [config.data, config.fsdp, config.tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {config}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices cannot be split as {config}")
    sizes[sizes.index(-1)] = len(devices) // known
  if -1 not in [config.data, config.fsdp, config.tensor] and math.prod(sizes) < len(devices):
    available, devices = devices, devices[: math.prod(sizes)]  # a fully sized mesh may use the first devices only
    left_out = sorted({d.process_index for d in available} - {d.process_index for d in devices})
    if jax.process_count() > 1 and left_out:  # those processes would hold no shard of anything
      raise ValueError(
        f"mesh {dict(zip(MESH_AXES, sizes))} uses {len(devices)} of {len(available)} devices, none of "
        f"process {', '.join(map(str, left_out))}: with {jax.process_count()} processes the mesh takes "
        "every process's devices (set one axis to -1 for the rest)"
      )
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
  try:
    return Mesh(mesh_utils.create_device_mesh(sizes, devices), MESH_AXES)
  except (AssertionError, ValueError, NotImplementedError):
    # Compile-only TPU topology devices (an ahead-of-time plan) defeat the physical layout
    # helper; their order is already the topology's.
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def mesh_from_config(block, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of a config's `mesh` block (data, fsdp, tensor sizes; -1 takes the remaining devices)."""
  return make_mesh(MeshConfig(block.data, block.fsdp, block.tensor), devices)


def logical_to_spec(
  logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=LOGICAL_AXIS_RULES
) -> PartitionSpec:
  """Mesh axes for each dimension, dropping mesh axes that do not divide it or are taken."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for name, size in zip(logical_axes, shape, strict=True):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    kept = []
    for axis in axes:
      if axis in used or mesh.shape[axis] == 1:
        continue
      if size % (math.prod(mesh.shape[a] for a in kept) * mesh.shape[axis]) == 0:
        kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def logical_sharding(logical_axes, shape, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical_axes, shape, mesh, rules))


def constrain(x, logical_axes: Sequence[str | None], mesh: Mesh | None, rules=LOGICAL_AXIS_RULES):
  """`with_sharding_constraint` by logical names; a no-op without a mesh."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, logical_sharding(logical_axes, x.shape, mesh, rules))


def tree_shardings(boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Shardings for a tree of `nn.Partitioned` leaves (as `jax.eval_shape(model.init)` gives)."""

  def one(leaf):
    if isinstance(leaf, nn.Partitioned):
      return logical_sharding(leaf.names, leaf.value.shape, mesh, rules)
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def put_host_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Places a host array into its sharding; each process fills only its own shards."""
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def check_batch_divides(batch_size: int, mesh: Mesh, what: str = "batch_size", num_microbatches: int = 1) -> None:
  """Rows are cut into `num_microbatches` slices, each split over the data and fsdp axes: say
  so plainly when they do not divide."""
  if batch_size % num_microbatches:
    raise ValueError(f"{what} {batch_size} does not split into num_microbatches={num_microbatches} slices")
  batch_size //= num_microbatches
  what = f"{what} per microbatch" if num_microbatches > 1 else what
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % rows:
    raise ValueError(
      f"{what} {batch_size} does not divide over the mesh's data x fsdp = {rows} devices; "
      f"use a multiple of {rows} or a smaller mesh (--config.mesh.fsdp=...)"
    )


def row_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Rows (the first axis) split over the data and fsdp axes, the rest whole."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def shard_rows(local_tree, mesh: Mesh):
  """Global arrays from this process's block of rows of every array in a tree (all rows on one process)."""
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(row_sharding(mesh, np.ndim(x)), np.asarray(x)), local_tree
  )
