"""Every jitted program a config will run, compiled ahead of time for its TPU slice (or the
local devices) without running anything, and checked against each chip's HBM: the inventory
behind `srit-jax plan` (srit_jax/phases/plan.py) and the check `sft`, `refine` and `pipeline`
run before any work on a TPU (`check_fits`).

Programs: the SFT step; the DPO step with its reference in the step or precomputed; the
reference log-prob pass; the sampler (prefill and decode loop) of self-refinement and of
evaluation at their batch sizes and lengths. Parameters are abstract (shapes, dtypes and
shardings), so nothing is downloaded or allocated. For each program: per-chip bytes of
arguments, temporaries and outputs (less what donation aliases), their total against the
chip's HBM, XLA's FLOPs beside the model-FLOPs formula, the attention kernel, the compile
time. A program that does not fit is named with its shortfall and the settings that would
make it fit.
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from srit_jax import sharding, topology
from srit_jax.conversion import loading
from srit_jax.model import attention, decoder
from srit_jax.training import dpo_step, flops, optimizer, sft_step
from srit_jax.training.state import create_train_state, state_shardings

GB = 1e9


class PlanError(ValueError):
  """Programs that do not fit their devices; the message names each and what would fit."""


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
  error: str = ""  # a compile failure, out of memory included

  @property
  def total(self) -> int:
    return self.arguments + self.temporaries + self.outputs - self.aliased


def _abstract(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _model_config(block, model_source: str, param_dtype: str | None = None):
  lora = {k: v for k, v in loading.lora_settings(block.get("lora")).items() if k != "init_adapter"}
  return loading.model_config_of(
    model_source,
    dtype=block.dtype,
    param_dtype=param_dtype or block.get("param_dtype", "float32"),
    remat_policy=block.get("remat_policy", "none"),
    attention=block.get("attention", "auto"),
    **lora,
  )


def _params(model_config, mesh, dtype=None, collection: str = "params"):
  """Abstract parameters (or LoRA adapters) laid out by their logical axes (in `dtype` when given)."""
  boxed = (
    decoder.boxed_param_shapes(model_config) if collection == "params" else decoder.boxed_adapter_shapes(model_config)
  )
  shapes = nn.unbox(boxed)
  if dtype is not None:
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype)), shapes)
  return _abstract(shapes, sharding.tree_shardings(boxed, mesh))


def _trained_and_base(model_config, mesh):
  """(trained tree, frozen base or None), abstract: the adapters over the base under LoRA."""
  if model_config.lora_rank:
    return _params(model_config, mesh, collection="lora"), _params(model_config, mesh)
  return _params(model_config, mesh), None


def _per_device_bytes(tree) -> int:
  """Bytes one device holds of a tree of sharded abstract arrays."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
    total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
  return total


_TEMPORARIES = re.compile(r"HLO temporaries \(([\d.]+)G\)")


def _measure(plan: ProgramPlan, lower, arguments) -> ProgramPlan:
  """Compiles `lower()` and records its memory and FLOPs; a program XLA refuses for lack of
  memory keeps what its report says (temporaries) and the size of its arguments."""
  start = time.perf_counter()
  try:
    compiled = lower().compile()
  except Exception as e:  # XLA refuses a program that cannot fit: its report is the finding
    plan.compile_seconds = time.perf_counter() - start
    plan.error = str(e).strip().splitlines()[0][:400]
    plan.arguments = _per_device_bytes(arguments)
    found = _TEMPORARIES.search(str(e))
    plan.temporaries = int(float(found.group(1)) * 2**30) if found else 0
    return plan
  plan.compile_seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  plan.arguments = memory.argument_size_in_bytes
  plan.temporaries = memory.temp_size_in_bytes
  plan.outputs = memory.output_size_in_bytes
  plan.aliased = memory.alias_size_in_bytes
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  plan.compiled_flops = float((cost or {}).get("flops", 0.0))
  return plan


def sft_program(block, model_source: str, devices) -> ProgramPlan:
  model_config = _model_config(block, model_source)
  mesh = sharding.mesh_from_config(block.mesh, devices)
  sharding.check_batch_divides(block.batch_size, mesh, "sft batch_size", block.num_microbatches)
  tx = optimizer.make_optimizer(block.optimizer, block.num_steps)
  trained, base = _trained_and_base(model_config, mesh)
  state = jax.eval_shape(lambda p: create_train_state(p, tx), trained)
  state = _abstract(state, state_shardings(state, model_config, mesh))
  step = sft_step.jit_sft_step(
    state, model_config, tx, mesh, num_microbatches=block.num_microbatches, chunk_size=block.chunk_size
  )
  rows = (block.batch_size, block.max_length)
  batch = {
    name: jax.ShapeDtypeStruct(rows, jnp.float32 if name == "loss_weights" else jnp.int32, sharding=s)
    for name, s in sft_step.batch_shardings(mesh).items()
  }
  plan = ProgramPlan(
    "sft",
    "SFT step",
    attention.kernel_for(model_config, "tpu" if _is_tpu(devices) else "cpu", rows[1]),
    model_flops=flops.train_step_flops(model_config, *rows) / len(devices),
  )
  return _measure(plan, lambda: step.lower(state, batch, base), (state, batch, base))


def _is_tpu(devices) -> bool:
  return devices[0].platform == "tpu"


def _pair_batch(mesh, pairs: int, layout, max_length: int, precomputed: bool, microbatches: int = 1):
  """A batch of `pairs` pairs in `layout`, with the most rows such pairs can need (the run sizes
  its rows from its data, never above this)."""
  shardings = dpo_step.pair_batch_shardings(mesh, precomputed, layout.packing == "shared_prompt")
  rows = layout.max_rows(pairs // microbatches, max_length) * microbatches
  batch = {
    "rows": {
      name: jax.ShapeDtypeStruct(
        (rows, layout.row_length), jnp.float32 if name == "loss_weights" else jnp.int32, sharding=x
      )
      for name, x in shardings["rows"].items()
    }
  }
  for name, x in shardings.items():
    if name != "rows":
      batch[name] = jax.ShapeDtypeStruct((pairs,), jnp.float32, sharding=x)
  return batch


def dpo_programs(block, model_source: str, devices) -> list[ProgramPlan]:
  model_config = _model_config(block, model_source)
  mesh = sharding.mesh_from_config(block.mesh, devices)
  sharding.check_batch_divides(block.batch_size, mesh, "refine batch_size", block.num_microbatches)
  tx = optimizer.make_optimizer(block.optimizer, block.num_steps)
  trained, base = _trained_and_base(model_config, mesh)
  state = jax.eval_shape(lambda p: create_train_state(p, tx), trained)
  state = _abstract(state, state_shardings(state, model_config, mesh))
  precomputed = bool(block.precompute_reference)
  reference = None
  if not precomputed:  # the frozen reference: a model copy, or under LoRA the reference adapters
    reference = trained if model_config.lora_rank else _params(model_config, mesh, model_config.dtype)
  layout = dpo_step.pair_layout(block, model_config, mesh)
  step = dpo_step.jit_dpo_step(
    state,
    model_config,
    tx,
    mesh,
    precomputed_reference=precomputed,
    branched=layout.packing == "shared_prompt",
    beta=block.beta,
    loss_type=block.loss_type,
    label_smoothing=block.label_smoothing,
    nll_weight=block.nll_weight,
    num_microbatches=block.num_microbatches,
    chunk_size=block.chunk_size,
  )
  kernel = attention.kernel_for(model_config, "tpu" if _is_tpu(devices) else "cpu", layout.row_length)
  mode = "reference precomputed" if precomputed else "reference in the step"
  batch = _pair_batch(mesh, block.batch_size, layout, block.max_length, precomputed, block.num_microbatches)
  rows = batch["rows"]["tokens"].shape[0]
  plans = [
    _measure(
      ProgramPlan(
        "refine",
        f"DPO step ({mode}; pairs {layout.packing}, {rows} rows of {layout.row_length})",
        kernel,
        model_flops=flops.dpo_step_flops(model_config, rows, layout.row_length, not precomputed) / len(devices),
      ),
      lambda: step.lower(state, reference, batch, base),
      (state, reference, batch, base),
    )
  ]
  if precomputed:
    pairs = max(block.batch_size, 2 * len(devices))
    log_probs = jax.jit(
      lambda p, batch, base: dpo_step.pair_log_probs(
        model_config, p, batch, mesh=mesh, chunk_size=block.chunk_size, base=base
      )
    )
    reference = trained if model_config.lora_rank else _params(model_config, mesh, model_config.dtype)
    pair_batch = _pair_batch(mesh, pairs, layout, block.max_length, False)
    rows = pair_batch["rows"]["tokens"].shape[0]
    plans.append(
      _measure(
        ProgramPlan(
          "refine",
          "reference log-probs",
          kernel,
          model_flops=flops.forward_flops(model_config, rows, layout.row_length) / len(devices),
        ),
        lambda: log_probs.lower(reference, pair_batch, base),
        (reference, pair_batch, base),
      )
    )
  return plans


def sampler_program(
  phase: str, block, model_source: str, devices, *, batch: int, prompt_length: int, max_new_tokens: int
) -> ProgramPlan:
  from srit_jax.generation import batched, sampler

  model_config = _model_config(block, model_source)
  mesh = sharding.mesh_from_config(block.mesh, devices)
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  batch = -(-batch // rows) * rows  # generation pads the batch to split over the mesh
  width = batched.prompt_bucket(prompt_length, model_config.max_position_embeddings - max_new_tokens)
  trained, base = _trained_and_base(model_config, mesh)
  params, adapters = (base, trained) if base is not None else (trained, None)
  row = lambda shape, dtype: jax.ShapeDtypeStruct(
    shape, dtype, sharding=sharding.logical_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh)
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  args = (
    row((batch, width), jnp.int32),
    row((batch, width), jnp.int32),
    row((batch,), jnp.int32),
    jax.ShapeDtypeStruct((max(1, len(model_config.eos_token_ids)),), jnp.int32, sharding=replicated),
    jax.ShapeDtypeStruct((2, 4), jnp.int32, sharding=replicated),
  )
  settings = sampler.SamplingSettings(temperature=block.get("temperature", 0.0), top_p=block.get("top_p", 1.0))
  plan = ProgramPlan(
    phase,
    f"sampler ({batch} rows, {width}-token prompts, {max_new_tokens} new; decode loop counted once)",
    attention.kernel_for(model_config, "tpu" if _is_tpu(devices) else "cpu", width),
    model_flops=(flops.forward_flops(model_config, batch, width) + flops.forward_flops(model_config, batch, 1))
    / len(devices),
  )
  return _measure(
    plan,
    lambda: sampler.sample.lower(
      model_config, params, *args, settings=settings, max_new_tokens=max_new_tokens, mesh=mesh, adapters=adapters
    ),
    (params, adapters, args),
  )


def programs(config, command: str, devices, *, prompt_length: int) -> list[ProgramPlan]:
  """Every program `command` runs for `config`, compiled for `devices`.

  A pipeline config (one with a `student`) plans its phase blocks for the student: all of
  them for "pipeline", one for "sft", "refine" or "eval".
  """
  if command not in ("sft", "refine", "eval", "pipeline"):
    raise ValueError(f"plan knows the programs of sft, refine, eval and pipeline, not {command!r}")
  if "student" in config:
    student = config.student
    blocks = {"sft": config.sft, "refine": config.refine, "eval": config.eval}
  elif command == "pipeline":
    raise ValueError("a pipeline plan needs a pipeline config (one with a student)")
  else:
    student, blocks = config.model, {command: config}
  plans = []
  if command in ("sft", "pipeline"):
    plans.append(sft_program(blocks["sft"], student, devices))
  if command in ("refine", "pipeline"):
    plans += _refine_programs(blocks["refine"], student, devices, prompt_length)
  if command in ("eval", "pipeline"):
    plans.append(_eval_program(blocks["eval"], student, devices, prompt_length))
  return plans


def _refine_programs(block, student, devices, prompt_length):
  sampling = sampler_program(
    "refine",
    block,
    student,
    devices,
    batch=block.generate_batch_size,
    prompt_length=prompt_length,
    max_new_tokens=max(block.max_new_tokens, block.max_new_tokens_direct),
  )
  return [sampling, *dpo_programs(block, student, devices)]


def _eval_program(block, student, devices, prompt_length):
  block = block.copy_and_resolve_references()
  with block.unlocked():
    block.param_dtype = block.dtype  # evaluation loads its model in the compute dtype
  return sampler_program(
    "eval",
    block,
    student,
    devices,
    batch=block.batch_size,
    prompt_length=prompt_length,
    max_new_tokens=block.max_new_tokens,
  )


def suggestions(plan: ProgramPlan, hbm: float, block) -> list[str]:
  """Settings that would make a program fit (estimates from its parts)."""
  if plan.error and not plan.temporaries:
    return ["see XLA's report above"]
  tips = []
  room = hbm - plan.arguments - plan.outputs + plan.aliased
  if room <= 0:
    return [
      f"its arguments alone (parameters, optimizer state, reference) need {plan.arguments / GB:.1f} GB per chip: "
      "a slice with more chips, or parameter-efficient tuning (lora.rank=8, with lora.base_quantization=int8 or nf4)"
    ]
  if plan.phase in ("sft", "refine") and "sampler" not in plan.name and "log-probs" not in plan.name:
    factor = plan.temporaries / room
    micro = block.num_microbatches
    for k in (2, 4, 8, 16, 32, 64):
      candidate = micro * k
      if block.batch_size % candidate == 0 and k >= factor:
        tips.append(f"num_microbatches={candidate} (temporaries scale with the microbatch)")
        break
    if block.get("remat_policy", "none") in ("none", "dots", "dots_no_batch"):
      tips.append("remat_policy=full (recompute each layer in the backward pass)")
    tips.append(f"batch_size={max(1, int(block.batch_size / max(factor, 1.0) / 2))} or lower")
  else:
    tips.append("a smaller batch (generate_batch_size or eval batch_size), or shorter prompts / max_new_tokens")
  return tips


def _gb(size: float) -> str:
  return f"{size / GB:.2f}" if size >= 0.01 * GB else f"{size / GB:.2g}"


def report(plans: list[ProgramPlan], hbm: float) -> str:
  lines = [
    f"per chip, HBM {hbm / GB:.2f} GB",
    "",
    "| phase | program | attention | arguments | temporaries | outputs | aliased | total | fits | XLA TFLOP | "
    "model TFLOP | compile s |",
    "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
  ]
  for p in plans:
    if p.error and not p.temporaries:
      fits = "no (compile failed)"
      sizes = "| – | – | – | – | – "
    else:
      fits = "yes" if p.total <= hbm else f"no (+{(p.total - hbm) / GB:.2f} GB)"
      sizes = "".join(f"| {_gb(x)} " for x in (p.arguments, p.temporaries, p.outputs, p.aliased, p.total))
    lines.append(
      f"| {p.phase} | {p.name} | {p.attention} {sizes}| {fits} | {p.compiled_flops / 1e12:.3g} "
      f"| {p.model_flops / 1e12:.3g} | {p.compile_seconds:.1f} |"
    )
  return "\n".join(lines)


def failures(plans: list[ProgramPlan], hbm: float, config, command: str) -> list[str]:
  """One line per program that does not fit: its shortfall and what would make it fit."""
  out = []
  for p in plans:
    if p.error or p.total > hbm:
      block = config[p.phase] if "student" in config else config
      shortfall = f"needs {p.total / GB:.2f} GB of {hbm / GB:.2f} GB" if p.temporaries else p.error
      out.append(f"{p.phase} {p.name}: {shortfall}; would fit with: {'; '.join(suggestions(p, hbm, block))}")
  return out


def plan_devices(topology_name: str | None):
  """(devices, HBM per device): a TPU slice's compile-only devices, or the local devices."""
  if topology_name:
    return topology.tpu_devices(topology_name)
  devices = jax.devices()
  hbm = topology.hbm_bytes(devices[0]) if devices[0].platform == "tpu" else _local_memory(devices[0])
  return devices, hbm


def _local_memory(device) -> float:
  try:
    return float(device.memory_stats()["bytes_limit"])
  except Exception:  # CPU devices report no limit: the host's memory, shared by its devices
    import os

    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return pages * size / max(1, jax.local_device_count())


def check_fits(config, command: str, *, prompt_length: int = 512) -> None:
  """Raises PlanError when a program of `command` cannot fit the local TPU devices (nothing
  runs; on other platforms this does nothing)."""
  if jax.default_backend() != "tpu":
    return
  devices, hbm = plan_devices(None)
  plans = programs(config, command, devices, prompt_length=prompt_length)
  problems = failures(plans, hbm, config, command)
  if problems:
    raise PlanError("programs that do not fit this slice:\n" + "\n".join(problems) + "\n\n" + report(plans, hbm))
