"""Every jitted program a config will run, compiled ahead of time for its TPU slice (or the
local devices) without running anything: the inventory behind `srit-jax plan`
(srit_jax/phases/plan.py) and the fit check of the training phases (srit_jax/planning/fit.py).

Programs: the SFT step (and its held-out loss, where it has one); the DPO step with its
reference in the step or precomputed; the reference log-prob pass; the sampler (prefill and
decode loop) of self-refinement and of evaluation at their batch sizes and lengths. Parameters
are abstract (shapes, dtypes and shardings), so nothing is downloaded or allocated. For each
program: per-chip bytes of arguments, temporaries and outputs (less what donation aliases),
XLA's FLOPs beside the model-FLOPs formula, the attention kernel, the compile time, and with
`cost` its FLOPs and bytes with every layer counted (srit_jax/planning/cost_model.py; for its
time bound, srit_jax/planning/run_time.py).

Each program's figures are compiled, or read where a `figures_cache` keeps them, by
srit_jax/planning/compiled_figures.py.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from srit_jax import sharding
from srit_jax.model import attention
from srit_jax.planning import cost_model
from srit_jax.planning.compiled_figures import Compiling
from srit_jax.planning.program_plan import ProgramPlan, block_model_config, measured, trained_and_base
from srit_jax.planning.training_programs import dpo_programs, sft_held_out_program, sft_holds_out, sft_program
from srit_jax.training import flops


def sampler_program(
  phase: str,
  block,
  model_source: str,
  devices,
  *,
  batch: int,
  prompt_length: int,
  max_new_tokens: int,
  how: Compiling = Compiling(),
) -> ProgramPlan:
  from srit_jax.generation import batched, next_token, sampler

  model_config = block_model_config(block, model_source)
  mesh = sharding.mesh_from_config(block.mesh, devices)
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  batch = -(-batch // rows) * rows  # generation pads the batch to split over the mesh
  width = batched.prompt_bucket(prompt_length, model_config.max_position_embeddings - max_new_tokens)
  row = lambda shape, dtype: jax.ShapeDtypeStruct(
    shape, dtype, sharding=sharding.logical_sharding(("batch",) + (None,) * (len(shape) - 1), shape, mesh)
  )
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  settings = next_token.SamplingSettings(temperature=block.get("temperature", 0.0), top_p=block.get("top_p", 1.0))

  def build(cfg, whole_rows=False, share=1):  # the sampler projects only each row's last position
    del whole_rows
    rows = batch // share
    sharding.check_batch_divides(rows, mesh, f"1/{share} of the sampler's rows")
    args = (
      row((rows, width), jnp.int32),
      row((rows, width), jnp.int32),
      row((rows,), jnp.int32),
      jax.ShapeDtypeStruct((max(1, len(model_config.eos_token_ids)),), jnp.int32, sharding=replicated),
      jax.ShapeDtypeStruct((2, 4), jnp.int32, sharding=replicated),
    )
    trained, base = trained_and_base(cfg, mesh)
    params, adapters = (base, trained) if base is not None else (trained, None)
    lower = lambda: sampler.sample.lower(
      cfg, params, *args, settings=settings, max_new_tokens=max_new_tokens, mesh=mesh, adapters=adapters
    )
    return lower, (params, adapters, args)

  plan = ProgramPlan(
    phase,
    f"sampler ({batch} rows, {width}-token prompts, {max_new_tokens} new; decode loop counted once)",
    attention.kernel_for(model_config, devices[0].platform, width),
    model_flops=(flops.forward_flops(model_config, batch, width) + flops.forward_flops(model_config, batch, 1))
    / len(devices),
  )
  plan.per_call = batch
  plan = measured(plan, build, model_config, how)
  if plan.cost is not None:  # the decode loop, counted once by XLA: the other new tokens' steps
    params, adapters, _ = build(model_config)[1]
    step = cost_model.decode_step_cost(model_config, (params, adapters), batch, width + max_new_tokens, mesh)
    plan.cost = plan.cost + step * (max_new_tokens - 1)
  return plan


def programs(
  config,
  command: str,
  devices,
  *,
  prompt_length: int,
  cost: bool = True,
  figures_cache: pathlib.Path | None = None,
  progress: Callable[[str], None] | None = None,
) -> list[ProgramPlan]:
  """Every program `command` runs for `config`, compiled for `devices`; with `cost`, each one's
  FLOPs and bytes with every layer counted, for its time bound (three compiles a program, not one).
  With `figures_cache`, a folder: each compiled program's figures are kept there and read back
  by later plans of the same program instead of compiling it (srit_jax/planning/compiled_figures.py). `progress` is
  told of each compile as it ends.

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
  how = Compiling(cost, figures_cache, progress)
  plans = []
  if command in ("sft", "pipeline"):
    plans.append(sft_program(blocks["sft"], student, devices, how))
    if sft_holds_out(config):
      plans.append(sft_held_out_program(blocks["sft"], student, devices, how))
  if command in ("refine", "pipeline"):
    plans += _refine_programs(blocks["refine"], student, devices, prompt_length, how)
  if command in ("eval", "pipeline"):
    plans.append(_eval_program(blocks["eval"], student, devices, prompt_length, how))
  return plans


def _refine_programs(block, student, devices, prompt_length, how):
  sampling = sampler_program(
    "refine",
    block,
    student,
    devices,
    batch=block.generate_batch_size,
    prompt_length=prompt_length,
    max_new_tokens=max(block.max_new_tokens, block.max_new_tokens_direct),
    how=how,
  )
  return [sampling, *dpo_programs(block, student, devices, how)]


def _eval_program(block, student, devices, prompt_length, how):
  block = block.copy_and_resolve_references()
  with block.unlocked():
    block.param_dtype = block.dtype  # evaluation loads its model in the compute dtype
    if not block.get("sampled_answers"):  # greedy answers alone; sampled ones run the sampling program
      block.temperature, block.top_p = 0.0, 1.0
  # Worked examples come before each question: each a prompt and its answer at most as long.
  prompt_length += block.get("num_shots", 0) * (prompt_length + block.max_new_tokens)
  return sampler_program(
    "eval",
    block,
    student,
    devices,
    batch=block.batch_size,
    prompt_length=prompt_length,
    max_new_tokens=block.max_new_tokens,
    how=how,
  )
