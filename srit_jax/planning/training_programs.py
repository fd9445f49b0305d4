"""The training phases' programs for `srit-jax plan`: the SFT step and its held-out loss, the DPO
step (its reference in the step or precomputed) and the reference log-prob pass, each built on
abstract parameters and batches for a phase block's mesh (srit_jax/planning/programs.py lists
them with the samplers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from srit_jax import sharding
from srit_jax.model import attention
from srit_jax.planning.compiled_figures import Compiling
from srit_jax.planning.program_plan import (
  SFT_HELD_OUT,
  ProgramPlan,
  abstract,
  abstract_params,
  block_model_config,
  measured,
  trained_and_base,
)
from srit_jax.training import dpo_step, flops, optimizer, sft_step
from srit_jax.training.state import create_train_state, state_shardings


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
    trained, base = trained_and_base(cfg, mesh)
    state = jax.eval_shape(lambda p: create_train_state(p, tx), trained)
    state = abstract(state, state_shardings(state, cfg, mesh))
    chunk, micro = (rows[1], 1) if whole_rows else (block.chunk_size, block.num_microbatches)
    step = sft_step.jit_sft_step(state, cfg, tx, mesh, num_microbatches=micro, chunk_size=chunk)
    return (lambda: step.lower(state, batch, base)), (state, batch, base)

  return build


def sft_program(block, model_source: str, devices, how: Compiling = Compiling()) -> ProgramPlan:
  model_config = block_model_config(block, model_source)
  rows = (block.batch_size, block.max_length)
  build = sft_build(block, devices)
  plan = ProgramPlan(
    "sft",
    "SFT step",
    attention.kernel_for(model_config, devices[0].platform, rows[1]),
    model_flops=flops.train_step_flops(model_config, *rows) / len(devices),
  )
  return measured(plan, build, model_config, how)


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
  model_config = block_model_config(block, model_source)
  mesh = sharding.mesh_from_config(block.mesh, devices)

  def build(cfg, whole_rows=False, share=1):
    rows = (block.batch_size // share, block.max_length)
    sharding.check_batch_divides(rows[0], mesh, f"1/{share} of sft batch_size")
    batch = _sft_batch(mesh, rows)
    trained, base = trained_and_base(cfg, mesh)
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
    attention.kernel_for(model_config, devices[0].platform, rows[1]),
    model_flops=flops.forward_flops(model_config, *rows) / len(devices),
    per_call=block.batch_size,
  )
  return measured(plan, build, model_config, how)


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
  model_config = block_model_config(block, model_source)
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
    trained, base = trained_and_base(cfg, mesh)
    state = jax.eval_shape(lambda p: create_train_state(p, tx), trained)
    state = abstract(state, state_shardings(state, cfg, mesh))
    reference = None
    if reads_reference and not precomputed:  # the frozen reference: a model copy, or under LoRA its adapters
      reference = trained if cfg.lora_rank else abstract_params(cfg, mesh, cfg.dtype)
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

  kernel = attention.kernel_for(model_config, devices[0].platform, layout.row_length)
  mode = "reference precomputed" if precomputed else "reference in the step" if reads_reference else "no reference"
  plans = [
    measured(
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
      trained, base = trained_and_base(cfg, mesh)
      reference = trained if cfg.lora_rank else abstract_params(cfg, mesh, cfg.dtype)
      chunk = layout.row_length if whole_rows else block.chunk_size
      log_probs = jax.jit(
        lambda p, batch, base: dpo_step.pair_log_probs(cfg, p, batch, mesh=mesh, chunk_size=chunk, base=base)
      )
      return (lambda: log_probs.lower(reference, scored, base)), (reference, scored, base)

    plans.append(
      measured(
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
