"""A compiled program's plan (`ProgramPlan`: its per-chip bytes, FLOPs, compile time and cost)
and what every program of srit_jax/planning/programs.py builds on: the student's model config
from a phase block, abstract parameters laid out on the mesh, and measuring a program's build.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import linen as nn

from srit_jax import sharding
from srit_jax.conversion import loading
from srit_jax.model import decoder
from srit_jax.planning import cost_model
from srit_jax.planning.compiled_figures import Compiling, Cost

SFT_HELD_OUT = "SFT held-out loss"


@dataclasses.dataclass
class ProgramPlan:
  phase: str
  name: str
  attention: str
  arguments: int = 0  # bytes per device
  temporaries: int = 0
  outputs: int = 0
  aliased: int = 0
  compiled_flops: float = 0.0  # per device, XLA's count
  model_flops: float = 0.0  # per device, our formula
  compile_seconds: float = 0.0
  compile_host_bytes: int = 0  # this host's resident memory at most while compiling it (0: unknown)
  cached: bool = False  # figures read from a figures cache, not compiled here
  error: str = ""  # a compile failure, out of memory included
  cost: Cost | None = None  # one call, every layer counted (see cost_model.extrapolated_cost); None if unknown
  per_call: int = 0  # rows of a sampler call, pairs of a reference pass, 0 for a training step

  @property
  def total(self) -> int:
    return self.arguments + self.temporaries + self.outputs - self.aliased

  def fits(self, hbm: float) -> bool:
    """Whether the program compiled and needs at most `hbm` bytes a chip."""
    return not self.error and self.total <= hbm


def abstract(tree, shardings):
  """`tree`'s arrays as shapes and dtypes with the given shardings: arguments of a compile."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def block_model_config(block, model_source: str, param_dtype: str | None = None):
  """The model config a phase block runs `model_source` with: its dtypes, remat, attention, LoRA."""
  lora = {k: v for k, v in loading.lora_settings(block.get("lora")).items() if k != "init_adapter"}
  return loading.model_config_of(
    model_source,
    dtype=block.dtype,
    param_dtype=param_dtype or block.get("param_dtype", "float32"),
    remat_policy=block.get("remat_policy", "none"),
    attention=block.get("attention", "auto"),
    **lora,
  )


def abstract_params(model_config, mesh, dtype=None, collection: str = "params"):
  """Abstract parameters (or LoRA adapters) laid out by their logical axes (in `dtype` when given)."""
  boxed = (
    decoder.boxed_param_shapes(model_config) if collection == "params" else decoder.boxed_adapter_shapes(model_config)
  )
  shapes = nn.unbox(boxed)
  if dtype is not None:
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype)), shapes)
  return abstract(shapes, sharding.tree_shardings(boxed, mesh))


def trained_and_base(model_config, mesh):
  """(trained tree, frozen base or None), abstract: the adapters over the base under LoRA."""
  if model_config.lora_rank:
    return abstract_params(model_config, mesh, collection="lora"), abstract_params(model_config, mesh)
  return abstract_params(model_config, mesh), None


def _measure(plan: ProgramPlan, lower, arguments, how: Compiling) -> ProgramPlan:
  """Compiles `lower()` and records its memory and FLOPs; a program XLA refuses for lack of
  memory keeps what its report says (temporaries) and the size of its arguments."""
  figures = how.figures(lower, arguments, f"{plan.phase} {plan.name}")
  plan.compile_seconds, plan.cached, plan.error = figures.seconds, figures.cached, figures.error
  plan.compile_host_bytes = figures.host_bytes
  if figures.error:
    plan.arguments, plan.temporaries = cost_model.per_device_bytes(arguments), figures.temporaries
    return plan
  plan.arguments, plan.temporaries = figures.arguments, figures.temporaries
  plan.outputs, plan.aliased = figures.outputs, figures.aliased
  plan.compiled_flops = figures.cost.flops
  return plan


def measured(plan: ProgramPlan, build, model_config, how: Compiling) -> ProgramPlan:
  """The program compiled at full depth (memory, XLA's FLOPs) and, with `how.cost` and when it
  compiles, its cost with every layer counted (two shallow compiles more)."""
  lower, arguments = build(model_config)
  plan = _measure(plan, lower, arguments, how)
  if how.cost and not plan.error:
    try:
      plan.cost = cost_model.extrapolated_cost(build, model_config, how, f"{plan.phase} {plan.name}")
    except Exception:  # the estimate is extra: a shallow copy that does not compile leaves it unknown
      plan.cost = None
  return plan
