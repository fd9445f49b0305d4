"""`srit-jax sft`: instruction tuning — records → packed batches → `sft_step` → checkpoints → export.

    srit-jax sft --config=configs/sft.py --config.train_file=runs/demos/demos.jsonl --workdir=runs/sft

Resumes from the latest checkpoint in `workdir` (state and data position), so a killed run
ends with the same parameters as an uninterrupted one. A non-finite loss or gradient stops
the run naming the step, and the last good checkpoint is left as it was.

The held-out loss (on eval_file, or on a share of train_file's questions held out by hash) is
logged every eval_every steps; with select_checkpoint="best_heldout" the evaluated step of the
lowest held-out loss is kept (WORKDIR/best_checkpoint) and exported, and with
early_stopping_patience the run ends once that many evaluations have not lowered it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import jax
import numpy as np

from srit_jax import io, sharding
from srit_jax.configs import checks
from srit_jax.data import fingerprint, preference_pairs, records, sft_batches, sft_examples
from srit_jax.planning import fit
from srit_jax.training import best_step, flops
from srit_jax.training.run import DeviceBatches, TrainingRun
from srit_jax.training.sft_step import batch_nll_sum, jit_sft_step
from srit_jax.training.state import TrainState

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SftResult:
  state: TrainState
  export_dir: pathlib.Path | None
  last_metrics: dict
  steps_run: int  # num_steps, or fewer where the run stopped early
  selected_step: int  # the step exported: steps_run, or that of the lowest held-out loss


def tokenize_records(tokenizer, recs, config, stats: sft_examples.TokenizeStats):
  examples = []
  for record in recs:
    try:
      prompt, answer = sft_examples.tokenize_example(
        tokenizer, record.instruction, record.input, record.output, use_chat_template=config.use_chat_template
      )
    except sft_examples.EmptyLossMaskError as e:
      raise sft_examples.EmptyLossMaskError(f"{record.source}: {e}") from None
    example = sft_examples.fit_to_length(prompt, answer, config.max_length + 1, stats=stats)
    if example is not None:
      examples.append(example)
  return examples


def split_held_out(recs: list[records.InstructionRecord], fraction: float, seed: int):
  """(training, held-out) records: a `fraction` of the questions (instruction and input) chosen
  by hash, as refine holds out questions, so that no question's answers are on both sides."""
  held = [preference_pairs.is_held_out("sft", f"{r.instruction}\n{r.input}", fraction, seed) for r in recs]
  return [r for r, h in zip(recs, held) if not h], [r for r, h in zip(recs, held) if h]


def _eval_batches(eval_examples, config) -> list[sft_examples.Batch]:
  """The held-out set as whole batches (empty rows weigh nothing), built once per run."""
  rows = sft_examples.pack_rows(eval_examples, config.max_length, pack=config.pack)
  rows += [[]] * (-len(rows) % config.batch_size)
  return [
    sft_examples.make_batch(
      eval_examples, rows[start : start + config.batch_size], config.max_length, config.loss_normalization
    )
    for start in range(0, len(rows), config.batch_size)
  ]


def _this_process_rows(batch: dict) -> dict:
  """This process's block of a global batch's rows (all of them on one process)."""
  rows = len(next(iter(batch.values()))) // jax.process_count()
  return {k: v[jax.process_index() * rows : (jax.process_index() + 1) * rows] for k, v in batch.items()}


def _read_records(config, report: records.ReadReport):
  """(training, held-out) records: train_file's, and eval_file's or a heldout_fraction of train_file's questions."""
  train_records = records.read_instruction_records(
    config.train_file, skip_bad_records=config.skip_bad_records, report=report
  )
  if report.skipped:
    log.warning("skipped %d bad records: %s", sum(report.skipped.values()), dict(report.skipped))
  if config.eval_file:
    return train_records, records.read_instruction_records(config.eval_file, skip_bad_records=config.skip_bad_records)
  if not config.heldout_fraction:
    return train_records, []
  train_records, eval_records = split_held_out(train_records, config.heldout_fraction, config.seed)
  if not train_records or not eval_records:
    raise ValueError(
      f"{config.train_file}: heldout_fraction={config.heldout_fraction} leaves {len(train_records)} training "
      f"and {len(eval_records)} held-out records; both need some"
    )
  return train_records, eval_records


def _held_out_loss(eval_examples, config, run: TrainingRun):
  """(evaluate, best): `evaluate(state, step)` gives the held-out loss per answer token (each
  step's computed once), offered to `best`, the step kept, where select_checkpoint asks for it."""
  eval_batches = _eval_batches(eval_examples, config)
  mesh, base = run.mesh, run.base
  nll_fn = jax.jit(
    lambda params, batch, base: batch_nll_sum(
      params, batch, config=run.model.config, mesh=mesh, chunk_size=config.chunk_size, base=base
    )
  )
  weight = sum(float(np.sum(b.loss_weights)) for b in eval_batches)
  best = best_step.BestCheckpoint(run.workdir) if config.select_checkpoint == "best_heldout" else None
  losses: dict[int, float] = {}

  def evaluate(state, step):
    if step not in losses:
      nll = sum(
        float(nll_fn(state.params, sharding.shard_rows(_this_process_rows(b.as_dict()), mesh), base))
        for b in eval_batches
      )
      losses[step] = nll / max(weight, 1e-6)
      if best is not None:
        best.offer(state, step, losses[step])
    return {"eval_loss": losses[step]}

  return evaluate, best


def train(config, workdir: str | pathlib.Path, *, check_memory: bool = True) -> SftResult:
  """Instruction tuning; on TPU its step is first compiled and checked against HBM (`check_memory`)."""
  checks.check(config, "sft")
  if check_memory:
    fit.check_fits(config, "sft")
  run = TrainingRun.start(config, workdir, "sft")
  tokenizer = run.model.tokenizer
  if tokenizer is None:
    raise ValueError(f"{config.model}: has no tokenizer (tokenizer.json or tokenizer.model), which SFT needs")

  report = records.ReadReport()
  train_records, eval_records = _read_records(config, report)
  stats = sft_examples.TokenizeStats()
  examples = tokenize_records(tokenizer, train_records, config, stats)
  eval_examples = tokenize_records(tokenizer, eval_records, config, sft_examples.TokenizeStats())
  print(
    f"{len(examples)} training examples ({stats.prompt_truncated} prompts cut, {stats.dropped_too_long} too long "
    f"dropped, {sum(report.skipped.values())} bad records skipped); {len(eval_examples)} held out"
  )
  if not examples:
    raise ValueError(
      f"{config.train_file}: no training example fits max_length={config.max_length} "
      f"({stats.dropped_too_long} too long)"
    )

  iterator = sft_batches.PackedBatchIterator(
    examples,
    batch_size=config.batch_size,
    row_length=config.max_length,
    seed=config.seed,
    pack=config.pack,
    normalization=config.loss_normalization,
  )
  if config.num_epochs:  # the run's length from its packed rows
    run.reschedule(iterator.steps_for_epochs(config.num_epochs))
    config = run.config
    print(f"{config.num_epochs} epochs over {len(examples)} examples: {config.num_steps} steps of {config.batch_size}")

  state = run.init_state()
  model_config, mesh = run.model.config, run.mesh
  jitted = jit_sft_step(
    state, model_config, run.optimizer, mesh, num_microbatches=config.num_microbatches, chunk_size=config.chunk_size
  )
  base = run.base

  def step_fn(state, batch):
    return jitted(state, batch, base)

  batches = DeviceBatches(iterator, lambda batch: sharding.shard_rows(batch.as_dict(), mesh))

  evaluate, best = _held_out_loss(eval_examples, config, run) if eval_examples else (None, None)
  stop_early = None  # config checks guarantee best_heldout, held-out data and eval_every with it
  if config.early_stopping_patience and best is not None:
    stop_early = best_step.patience_rule(best, config.early_stopping_patience, config.eval_every)

  last = run.fit(
    step_fn,
    batches,
    step_flops=flops.train_step_flops(model_config, config.batch_size, config.max_length),
    data_identity=fingerprint.file_digest(config.train_file),
    evaluate=evaluate,
    stop_early=stop_early,
    desc="sft",
    progress_keys=("loss", "tokens_per_s"),
  )
  steps_run = selected_step = int(run.state.step)  # num_steps, or fewer where the run stopped early
  summary = {"num_steps": config.num_steps, "steps_run": steps_run, "last_step": last}
  if evaluate is not None:
    curve = {step: values["eval_loss"] for step, values in best_step.logged_held_out(run.workdir).items()}
    if best is not None:
      curve[steps_run] = evaluate(run.state, steps_run)["eval_loss"]  # the last step is a candidate too
      summary["selected"] = {"step": best.step, "heldout_loss": best.loss}
      if best.step != steps_run:
        print(f"keeping the step of the lowest held-out loss: step {best.step} ({best.loss:.4f})")
        run.state = run.state.replace(params=best.restore(run.state.params))
        selected_step = best.step
    summary["heldout_curve"] = {str(step): loss for step, loss in sorted(curve.items())}
  export_dir = run.export()  # lets the optimizer state go first
  if export_dir is not None:
    summary["export_dir"] = str(export_dir)
  io.write_json(run.workdir / "sft_summary.json", summary)
  return SftResult(run.state, export_dir, last, steps_run, selected_step)
