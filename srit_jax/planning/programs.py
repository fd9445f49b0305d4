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

import dataclasses
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from srit_jax import sharding
from srit_jax.conversion import loading
from srit_jax.model import attention, decoder
from srit_jax.planning import cost_model
from srit_jax.planning.compiled_figures import Compiling, Cost
from srit_jax.training import dpo_step, flops, optimizer, sft_step
from srit_jax.training.state import create_train_state, state_shardings

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


def _measured(plan: ProgramPlan, build, model_config, how: Compiling) -> ProgramPlan:
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


def sft_build(block, devices):
  """`build(model_config, whole_rows=False) -> (lower, arguments)`: the SFT step of `block` on
  `devices` for any model config (the full one, or the shallow copies the cost model compiles)."""
  mesh = sharding.mesh_from_config(block.mesh, devices)
  sharding.check_batch_divides(block.batch_size, mesh, "sft batch_size", block.num_microbatches)
  tx = optimizer.make_optimizer(block.optimizer, block.num_steps)

  def build(cfg, whole_rows=False, share=1):
    rows = (block.batch_size // share, block.max_length)
    sharding.check_batch_divides(rows[0], mesh, f"1/{share} of sft batch_size")
    batch = _sft_batch(mesh, rows)
    trained, base = _trained_and_base(cfg, mesh)
    state = jax.eval_shape(lambda p: create_train_state(p, tx), trained)
    state = _abstract(state, state_shardings(state, cfg, mesh))
    chunk, micro = (rows[1], 1) if whole_rows else (block.chunk_size, block.num_microbatches)
    step = sft_step.jit_sft_step(state, cfg, tx, mesh, num_microbatches=micro, chunk_size=chunk)
    return (lambda: step.lower(state, batch, base)), (state, batch, base)

  return build


def sft_program(block, model_source: str, devices, how: Compiling = Compiling()) -> ProgramPlan:
  model_config = _model_config(block, model_source)
  rows = (block.batch_size, block.max_length)
  build = sft_build(block, devices)
  plan = ProgramPlan(
    "sft",
    "SFT step",
    attention.kernel_for(model_config, "tpu" if _is_tpu(devices) else "cpu", rows[1]),
    model_flops=flops.train_step_flops(model_config, *rows) / len(devices),
  )
  return _measured(plan, build, model_config, how)


def _sft_batch(mesh, rows: tuple[int, int]) -> dict:
  return {
    name: jax.ShapeDtypeStruct(rows, jnp.float32 if name == "loss_weights" else jnp.int32, sharding=s)
    for name, s in sft_step.batch_shardings(mesh).items()
  }


def sft_holds_out(config) -> bool:
  """Whether a config's SFT computes a held-out loss (every `eval_every` steps): on its
  `eval_file`, a `heldout_fraction` of its records, or in a pipeline the teacher's solutions of
  `demos.heldout_questions` more questions."""
  block = config.sft if "student" in config else config
  held_out = block.get("heldout_fraction") or block.get("eval_file")
  held_out = held_out or ("student" in config and config.demos.heldout_questions)
  return bool(block.get("eval_every") and held_out)


def sft_held_out_program(block, model_source: str, devices, how: Compiling = Compiling()) -> ProgramPlan:
  """SFT's held-out loss: the NLL sum of a batch of held-out rows under the trained parameters
  (a forward pass at the step's rows; no gradients, no optimizer state)."""
  model_config = _model_config(block, model_source)
  mesh = sharding.mesh_from_config(block.mesh, devices)

  def build(cfg, whole_rows=False, share=1):
    rows = (block.batch_size // share, block.max_length)
    sharding.check_batch_divides(rows[0], mesh, f"1/{share} of sft batch_size")
    batch = _sft_batch(mesh, rows)
    trained, base = _trained_and_base(cfg, mesh)
    chunk = rows[1] if whole_rows else block.chunk_size
    nll = jax.jit(
      lambda params, batch, base: sft_step.batch_nll_sum(
        params, batch, config=cfg, mesh=mesh, chunk_size=chunk, base=base
      )
    )
    return (lambda: nll.lower(trained, batch, base)), (trained, batch, base)

  rows = (block.batch_size, block.max_length)
  plan = ProgramPlan(
    "sft",
    SFT_HELD_OUT,
    attention.kernel_for(model_config, "tpu" if _is_tpu(devices) else "cpu", rows[1]),
    model_flops=flops.forward_flops(model_config, *rows) / len(devices),
    per_call=block.batch_size,
  )
  return _measured(plan, build, model_config, how)


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


def dpo_programs(block, model_source: str, devices, how: Compiling = Compiling()) -> list[ProgramPlan]:
  model_config = _model_config(block, model_source)
  mesh = sharding.mesh_from_config(block.mesh, devices)
  sharding.check_batch_divides(block.batch_size, mesh, "refine batch_size", block.num_microbatches)
  tx = optimizer.make_optimizer(block.optimizer, block.num_steps)
  reads_reference = dpo_step.uses_reference(block.loss_type)
  precomputed = bool(block.precompute_reference) and reads_reference
  layout = dpo_step.pair_layout(block, model_config, mesh)
  batch = _pair_batch(mesh, block.batch_size, layout, block.max_length, precomputed, block.num_microbatches)
  rows = batch["rows"]["tokens"].shape[0]

  def build_step(cfg, whole_rows=False, share=1):
    step_batch = batch
    if share > 1:  # a cost copy on a share of the pairs
      sharding.check_batch_divides(block.batch_size // share, mesh, f"1/{share} of refine batch_size")
      step_batch = _pair_batch(mesh, block.batch_size // share, layout, block.max_length, precomputed)
    trained, base = _trained_and_base(cfg, mesh)
    state = jax.eval_shape(lambda p: create_train_state(p, tx), trained)
    state = _abstract(state, state_shardings(state, cfg, mesh))
    reference = None
    if reads_reference and not precomputed:  # the frozen reference: a model copy, or under LoRA its adapters
      reference = trained if cfg.lora_rank else _params(cfg, mesh, cfg.dtype)
    step = dpo_step.jit_dpo_step(
      state,
      cfg,
      tx,
      mesh,
      precomputed_reference=precomputed,
      branched=layout.packing == "shared_prompt",
      beta=block.beta,
      loss_type=block.loss_type,
      label_smoothing=block.label_smoothing,
      nll_weight=block.nll_weight,
      num_microbatches=1 if whole_rows else block.num_microbatches,
      chunk_size=layout.row_length if whole_rows else block.chunk_size,
    )
    return (lambda: step.lower(state, reference, step_batch, base)), (state, reference, step_batch, base)

  kernel = attention.kernel_for(model_config, "tpu" if _is_tpu(devices) else "cpu", layout.row_length)
  mode = "reference precomputed" if precomputed else "reference in the step" if reads_reference else "no reference"
  plans = [
    _measured(
      ProgramPlan(
        "refine",
        f"DPO step ({mode}; pairs {layout.packing}, {rows} rows of {layout.row_length})",
        kernel,
        model_flops=flops.dpo_step_flops(model_config, rows, layout.row_length, reads_reference and not precomputed)
        / len(devices),
      ),
      build_step,
      model_config,
      how,
    )
  ]
  if precomputed:
    pairs = max(block.batch_size, 2 * len(devices))
    pair_batch = _pair_batch(mesh, pairs, layout, block.max_length, False)
    rows = pair_batch["rows"]["tokens"].shape[0]

    def build_reference(cfg, whole_rows=False, share=1):
      scored = pair_batch
      if share > 1:  # a cost copy on a share of the pairs
        sharding.check_batch_divides(pairs // share, mesh, f"1/{share} of the scored pairs")
        scored = _pair_batch(mesh, pairs // share, layout, block.max_length, False)
      trained, base = _trained_and_base(cfg, mesh)
      reference = trained if cfg.lora_rank else _params(cfg, mesh, cfg.dtype)
      chunk = layout.row_length if whole_rows else block.chunk_size
      log_probs = jax.jit(
        lambda p, batch, base: dpo_step.pair_log_probs(cfg, p, batch, mesh=mesh, chunk_size=chunk, base=base)
      )
      return (lambda: log_probs.lower(reference, scored, base)), (reference, scored, base)

    plans.append(
      _measured(
        ProgramPlan(
          "refine",
          f"reference log-probs ({pairs} pairs)",
          kernel,
          model_flops=flops.forward_flops(model_config, rows, layout.row_length) / len(devices),
          per_call=pairs,
        ),
        build_reference,
        model_config,
        how,
      )
    )
  return plans


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

  model_config = _model_config(block, model_source)
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
    trained, base = _trained_and_base(cfg, mesh)
    params, adapters = (base, trained) if base is not None else (trained, None)
    lower = lambda: sampler.sample.lower(
      cfg, params, *args, settings=settings, max_new_tokens=max_new_tokens, mesh=mesh, adapters=adapters
    )
    return lower, (params, adapters, args)

  plan = ProgramPlan(
    phase,
    f"sampler ({batch} rows, {width}-token prompts, {max_new_tokens} new; decode loop counted once)",
    attention.kernel_for(model_config, "tpu" if _is_tpu(devices) else "cpu", width),
    model_flops=(flops.forward_flops(model_config, batch, width) + flops.forward_flops(model_config, batch, 1))
    / len(devices),
  )
  plan.per_call = batch
  plan = _measured(plan, build, model_config, how)
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
