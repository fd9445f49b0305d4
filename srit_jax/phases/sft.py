"""The instruction-tuning run: records -> packed batches -> `sft_step` -> checkpoints -> export.

    srit-jax sft --config=configs/sft.py --workdir=runs/sft

Resumes from the latest checkpoint in `workdir` (state and data position), so a killed run
ends with the same parameters as an uninterrupted one. A non-finite loss or gradient stops
the run naming the step, and the last good checkpoint is left as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import jax
import numpy as np

from srit_jax import sharding
from srit_jax.conversion import hf_checkpoint, loading
from srit_jax.data import records
from srit_jax.data import sft_batches as data_iterator
from srit_jax.data import sft_examples as sft_data
from srit_jax.training import flops, optimizer
from srit_jax.training import loop as train_loop
from srit_jax.training import sft_step as train_step_lib

log = logging.getLogger(__name__)
NonFiniteLossError = train_loop.NonFiniteLossError  # re-exported: callers catch it from here


@dataclasses.dataclass
class SftResult:
  state: train_step_lib.TrainState
  export_dir: pathlib.Path | None
  last_metrics: dict


def tokenize_records(tokenizer, recs, config, stats: sft_data.TokenizeStats):
  examples = []
  for record in recs:
    try:
      prompt, answer = sft_data.tokenize_example(
        tokenizer, record.instruction, record.input, record.output, use_chat_template=config.use_chat_template
      )
    except sft_data.EmptyLossMaskError as e:
      raise sft_data.EmptyLossMaskError(f"{record.source}: {e}") from None
    example = sft_data.fit_to_length(prompt, answer, config.max_length + 1, stats=stats)
    if example is not None:
      examples.append(example)
  return examples


def _eval_batches(eval_examples, config) -> list[sft_data.Batch]:
  """The held-out set as whole batches (empty rows weigh nothing), built once per run."""
  rows = sft_data.pack_rows(eval_examples, config.max_length, pack=config.pack)
  rows += [[]] * (-len(rows) % config.batch_size)
  return [
    sft_data.make_batch(
      eval_examples, rows[start : start + config.batch_size], config.max_length, config.loss_normalization
    )
    for start in range(0, len(rows), config.batch_size)
  ]


def _eval_loss(eval_fn, state, eval_batches, mesh) -> float:
  nll = sum(float(eval_fn(state.params, train_step_lib.shard_batch(b.as_dict(), mesh))) for b in eval_batches)
  weight = sum(float(np.sum(b.loss_weights)) for b in eval_batches)
  return nll / max(weight, 1e-6)


def train(config, workdir: str | pathlib.Path) -> SftResult:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(sharding.MeshConfig(config.mesh.data, config.mesh.fsdp, config.mesh.tensor))
  sharding.check_batch_divides(config.batch_size, mesh, "batch_size", config.num_microbatches)
  model = loading.load_model(
    config.model, mesh=mesh, dtype=config.dtype, param_dtype=config.param_dtype, remat_policy=config.remat_policy
  )

  report = records.ReadReport()
  train_records = records.read_instruction_records(
    config.train_file, skip_bad_records=config.skip_bad_records, report=report
  )
  if report.skipped:
    log.warning("skipped %d bad records: %s", sum(report.skipped.values()), dict(report.skipped))
  stats = sft_data.TokenizeStats()
  examples = tokenize_records(model.tokenizer, train_records, config, stats)
  eval_examples = []
  if config.eval_file:
    eval_records = records.read_instruction_records(config.eval_file, skip_bad_records=config.skip_bad_records)
    eval_examples = tokenize_records(model.tokenizer, eval_records, config, sft_data.TokenizeStats())
  print(f"{jax.process_count()} process(es), {jax.device_count()} device(s), mesh {dict(mesh.shape)}")
  print(
    f"{len(examples)} training examples ({stats.prompt_truncated} prompts cut, {stats.dropped_too_long} too long "
    f"dropped, {sum(report.skipped.values())} bad records skipped); {len(eval_examples)} held out"
  )

  tx = optimizer.make_optimizer(config.optimizer, config.num_steps)
  state = train_step_lib.create_train_state(model.params, tx)
  shardings = train_step_lib.state_shardings(state, model.config, mesh)
  state = jax.device_put(state, shardings)
  iterator = data_iterator.PackedBatchIterator(
    examples,
    batch_size=config.batch_size,
    row_length=config.max_length,
    seed=config.seed,
    pack=config.pack,
    normalization=config.loss_normalization,
  )
  step_fn = train_step_lib.jit_sft_step(
    state, model.config, tx, mesh, num_microbatches=config.num_microbatches, chunk_size=config.chunk_size
  )
  eval_fn = jax.jit(
    lambda params, batch: train_step_lib.batch_nll_sum(
      params, batch, config=model.config, mesh=mesh, chunk_size=config.chunk_size
    )
  )
  eval_batches = _eval_batches(eval_examples, config) if eval_examples else []
  schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_steps)
  step_flops = flops.train_step_flops(model.config, config.batch_size, config.max_length)
  peak = flops.device_peak_flops(config.dtype)

  def derived_metrics(step, values, seconds):
    return {
      "learning_rate": float(schedule(step - 1)),
      "tokens_per_s": values["tokens"] / seconds,
      "mfu": step_flops / seconds / peak,
    }

  state, last = train_loop.run_steps(
    workdir=workdir,
    state=state,
    step_fn=step_fn,
    next_batch=lambda: train_step_lib.shard_batch(next(iterator).as_dict(), mesh),
    data_state=iterator.get_state,
    restore_data_state=iterator.set_state,
    num_steps=config.num_steps,
    save_every=config.save_every,
    keep_checkpoints=config.keep_checkpoints,
    async_checkpoints=config.async_checkpoints,
    derived_metrics=derived_metrics,
    evaluate=(lambda state, step: {"eval_loss": _eval_loss(eval_fn, state, eval_batches, mesh)})
    if eval_examples
    else None,
    eval_every=config.eval_every,
    desc="sft",
    progress_keys=("loss", "tokens_per_s"),
  )

  export_dir = None
  if config.export:
    export_dir = workdir / "export"
    hf_checkpoint.save_hf_checkpoint(state.params, model.config, export_dir, tokenizer=model.tokenizer)
    print(f"exported to {export_dir}")
  return SftResult(state, export_dir, last)
