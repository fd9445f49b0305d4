"""`srit-jax refine`: self-refinement of the instructed student — sample → pairs → DPO → export.

    srit-jax refine --config=configs/refine.py --config.model=runs/sft/export --workdir=runs/refine

1. The student answers each training question (CoT and direct prompts); generations stream
   to WORKDIR/samples.*.jsonl, so a killed run keeps what it sampled. With the
   `slip_corrected` strategy it then goes on (greedy) from the first wrong calculation of each
   wrong CoT answer, set right (samples.corrected.jsonl).
   The questions: the task's training split (or the demonstrations' questions), and with
   `new_questions` that many more training questions that no demonstration answers — the
   task's gold answers score them, so the student refines beyond what it was taught.
   (Steps 1 and 2: srit_jax/phases/student_answers.py.)
2. Pairs by the configured strategy (srit_jax/data/preference_pairs.py) → pairs.jsonl
   (training), heldout_pairs.jsonl (a fixed share of questions, for reward accuracy),
   pair_stats.json.
3. DPO against a frozen reference = the student as loaded. By default the reference
   log-probabilities are computed once over the fixed pairs (reference_logps.npz) and the
   reference tree is dropped (a preempted pass keeps its finished batches and goes on from
   them); otherwise it runs inside each step under stop_gradient.
   Pairs are packed into rows (`pair_packing`: shared prompts by default, see
   srit_jax/data/pair_batches.py). Checkpoints, exact resume, progress, metrics and the NaN
   guard are the shared training run's. Held-out reward accuracy, margin and loss (the run's
   own loss) are logged every eval_every steps; with select_checkpoint="best_heldout" the
   step of the lowest held-out loss (the run's own, or selection_loss_type's) is kept
   (WORKDIR/best_checkpoint) and exported, and with early_stopping_patience the run ends once
   that many evaluations have not lowered it.
4. Export to WORKDIR/export (HF format) and refine_summary.json.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import jax
import numpy as np

from srit_jax import host_memory, io, sharding
from srit_jax.configs import checks
from srit_jax.conversion import loading
from srit_jax.data import fingerprint, pair_batches
from srit_jax.data.sft_examples import TokenizeStats
from srit_jax.phases import student_answers
from srit_jax.planning import fit
from srit_jax.tasks import prompts
from srit_jax.training import best_step, dpo_step, flops, pair_scoring
from srit_jax.training.run import DeviceBatches, TrainingRun


def reward_metrics(
  policy, reference, lengths, *, nll_weight: float = 0.0, selection_loss_type: str = "", **loss_options
) -> dict:
  """Held-out figures of pairs from (chosen, rejected) log-probs of the policy and the reference
  and their (chosen, rejected) answer lengths: the run's own loss (its loss_type and that loss's
  settings, beta and NLL term), the chosen answers' length-normalised NLL, reward accuracy and
  margin; with a `selection_loss_type` other than the run's, that loss too (same settings)."""
  lengths = dict(chosen_lengths_B=lengths[0], rejected_lengths_B=lengths[1])
  per_pair, chosen_rewards, rejected_rewards = dpo_step.dpo_loss(*policy, *reference, **lengths, **loss_options)
  nll = dpo_step.length_normalized_nll(policy[0], lengths["chosen_lengths_B"])
  values = dpo_step.pair_metrics(per_pair + nll_weight * nll, chosen_rewards, rejected_rewards)
  values["nll/chosen"] = np.mean(nll)
  values = {f"eval/{name}": float(value) for name, value in values.items()}
  if selection_loss_type and selection_loss_type != loss_options.get("loss_type", "sigmoid"):
    options = {**loss_options, "loss_type": selection_loss_type}
    selection, _, _ = dpo_step.dpo_loss(*policy, *reference, **lengths, **options)
    values[best_step.SELECTION_LOSS] = float(np.mean(selection + nll_weight * nll))
  return values


def selection_key(config) -> str:
  """The held-out figure a run's step is chosen by: its own loss, or its selection_loss_type's."""
  return best_step.SELECTION_LOSS if best_step.other_selection_loss(config) else "eval/loss"


def _reference(config, model, mesh):
  """(tree, identity) of the frozen reference: the loaded student itself (its parameters in the
  compute dtype; under LoRA its adapters, over the shared base), or `reference_model` (the SFT
  student, when refinement iterates from a later policy: a model, or under LoRA an adapter)."""
  if model.adapters is not None:
    if config.reference_model:
      from srit_jax.conversion import peft

      return peft.load_peft_adapter(config.reference_model, model.config, mesh), fingerprint.digest(
        model.identity, fingerprint.source_digest(config.reference_model)
      )
    return jax.tree.map(lambda x: x.copy(), model.adapters), model.identity
  if config.reference_model:
    reference = loading.load_model(config.reference_model, mesh=mesh, dtype=config.dtype, param_dtype=config.dtype)
    if reference.config.vocab_size != model.config.vocab_size:
      raise ValueError(f"reference_model {config.reference_model}: another vocabulary than model {config.model}")
    return reference.params, reference.identity
  return jax.tree.map(lambda x: x.astype(model.config.dtype).copy(), model.params), model.identity


def run(
  config, workdir: str | pathlib.Path, *, progress: bool = True, check_memory: bool = True, made_elsewhere=()
) -> dict:
  """Self-refinement; on TPU its programs are first compiled and checked against HBM (`check_memory`).
  `made_elsewhere`: other runs' folders of this phase, whose samples and reference log-probs are
  taken over where made from the same inputs (a sweep of DPO settings samples once)."""
  checks.check(config, "refine")
  if check_memory:
    fit.check_fits(config, "refine")
  run = TrainingRun.start(config, workdir, "refine", batch_name="batch_size (pairs per step)")
  workdir, model, mesh = run.workdir, run.model, run.mesh
  if model.tokenizer is None:
    raise ValueError(f"{config.model}: has no tokenizer (tokenizer.json or tokenizer.model), which refine needs")

  # 1. The student's own answers; 2. pairs of them.
  examples = student_answers.training_questions(config)
  samples = student_answers.sample_answers(
    model, examples, workdir, config, progress=progress, made_elsewhere=made_elsewhere
  )
  corrections = None
  if config.strategy == "slip_corrected":
    corrections = student_answers.sample_corrections(
      model, examples, samples[prompts.COT], workdir, config, progress=progress, made_elsewhere=made_elsewhere
    )
  train_pairs, held_out_pairs, stats = student_answers.write_pairs(config, examples, samples, corrections, workdir)

  # 3. DPO.
  token_stats = TokenizeStats()
  options = dict(use_chat_template=config.use_chat_template)
  tokenized = pair_batches.tokenize_pairs(model.tokenizer, train_pairs, config.max_length, stats=token_stats, **options)
  held_out = pair_batches.tokenize_pairs(model.tokenizer, held_out_pairs, config.max_length, **options)
  if not tokenized:
    raise ValueError(
      f"no preference pair to train on ({stats['pairs']} built, {token_stats.dropped_too_long} too long "
      f"for max_length={config.max_length})"
    )
  if config.num_epochs:  # the run's length from its pairs
    run.reschedule(max(1, math.ceil(config.num_epochs * len(tokenized) / config.batch_size)))
    config = run.config
    print(f"{config.num_epochs} epochs over {len(tokenized)} pairs: {config.num_steps} steps of {config.batch_size}")
  model_config, base = model.config, run.base
  layout = dpo_step.pair_layout(config, model_config, mesh)
  # The reference's and the held-out scores read both answers, whatever the training rows hold.
  scoring_layout = dataclasses.replace(layout, chosen_only=False)
  eval_batch = max(config.batch_size, 2 * mesh.devices.size)

  def score(pairs):
    return pair_scoring.PairScorer(pairs, scoring_layout, model_config, mesh, eval_batch, config.chunk_size)

  # A reference-free preference loss (SimPO, ORPO) has no reference at all: its rewards are its
  # own. The NLL alone trains without one, but its held-out pairs are scored against it (DPO's rewards).
  reference_free = config.loss_type in dpo_step.REFERENCE_FREE_PREFERENCE
  if reference_free:
    reference_params, reference_identity = None, None
  else:
    reference_params, reference_identity = _reference(config, model, mesh)
  key = fingerprint.digest(reference_identity or model.identity, config.max_length, train_pairs, held_out_pairs)
  reference = held_out_reference = None
  reads_reference = dpo_step.uses_reference(config.loss_type)
  precompute_reference = config.precompute_reference and reads_reference
  if precompute_reference:
    reference_scorer = score(tokenized)
    reference = pair_scoring.cached_log_probs(
      workdir / "reference_logps.npz",
      key,
      reference_scorer,
      reference_params,
      base,
      desc="reference log-probs" if progress else None,
      made_elsewhere=made_elsewhere,
    )
  # The sampler's and the reference pass's programs go before training; the held-out pairs'
  # program, which scores the reference here and the policy at every evaluation, stays.
  host_memory.release()
  held_out_scorer = score(held_out) if held_out else None
  if held_out and reference_free:
    held_out_reference = (np.zeros(len(held_out), np.float32),) * 2  # unread
  elif held_out:
    held_out_reference = pair_scoring.cached_log_probs(
      workdir / "heldout_reference_logps.npz",
      key,
      held_out_scorer,
      reference_params,
      base,
      made_elsewhere=made_elsewhere,
    )
  if precompute_reference or not reads_reference:
    reference_params = None  # the frozen tree is no longer needed: its log-probs are, or none

  iterator = pair_batches.PairBatchIterator(
    tokenized,
    batch_size=config.batch_size,
    layout=layout,
    seed=student_answers.draw_seed(config),
    num_microbatches=config.num_microbatches,
    reference=reference,
  )
  # The most rows any batch of the run needs; each batch holds only what it needs of them (the
  # rest would be padding), in multiples the mesh splits: a few shapes, one compilation each.
  # Likewise the most answer positions a row holds: the output layer runs there alone.
  most_rows, most_answers = iterator.needs_for_steps(config.num_steps)
  iterator.rows_per_microbatch = pair_scoring.round_up(most_rows, pair_scoring.row_multiple(mesh))
  iterator.trim_rows = pair_scoring.row_multiple(mesh)
  iterator.answer_positions = pair_batches.answer_positions_per_row(most_answers, layout.row_length)
  rows_per_step = iterator.rows_per_microbatch * config.num_microbatches * jax.process_count()
  positions = sum(len(p.chosen.tokens) + len(p.rejected.tokens) - 2 for p in tokenized) / len(tokenized)
  what = "chosen answers" if layout.chosen_only else "pairs"
  print(
    f"{what} packed as {layout.packing!r}: up to {rows_per_step} rows of {layout.row_length} per step of "
    f"{config.batch_size} pairs (one row per side: {2 * config.batch_size} of {config.max_length}); "
    f"{positions:.0f} positions per pair unpacked; the output layer at "
    + (f"{iterator.answer_positions} answer positions a row" if iterator.answer_positions else "every position")
  )
  state = run.init_state()
  loss_options = dict(
    beta=config.beta,
    loss_type=config.loss_type,
    label_smoothing=config.label_smoothing,
    simpo_gamma=config.simpo_gamma,
    dpop_lambda=config.dpop_lambda,
  )
  jitted = dpo_step.jit_dpo_step(
    state,
    model_config,
    run.optimizer,
    mesh,
    precomputed_reference=precompute_reference,
    branched=layout.packing == "shared_prompt",
    answer_positions=bool(iterator.answer_positions),
    nll_weight=config.nll_weight,
    num_microbatches=config.num_microbatches,
    chunk_size=config.chunk_size,
    **loss_options,
  )
  held_out_lengths = tuple(
    np.asarray([sum(getattr(p, side).loss_mask) for p in held_out], np.float32) for side in ("chosen", "rejected")
  )
  held_out_metrics: dict[int, dict] = {}  # by step: the last step's is logged and reported, computed once
  best = best_step.BestCheckpoint(workdir) if config.select_checkpoint == "best_heldout" and held_out else None

  def evaluate(state, step):
    if step not in held_out_metrics:
      policy = held_out_scorer(state.params, base)
      held_out_metrics[step] = reward_metrics(
        policy,
        held_out_reference,
        held_out_lengths,
        nll_weight=config.nll_weight,
        selection_loss_type=best_step.other_selection_loss(config),
        **loss_options,
      )
      if best is not None:
        best.offer(state, step, held_out_metrics[step][selection_key(config)])
    return held_out_metrics[step]

  stop_early = None  # config checks guarantee best_heldout, a held-out share and eval_every with it
  if config.early_stopping_patience and best is not None:
    stop_early = best_step.patience_rule(best, config.early_stopping_patience, config.eval_every)
  initial = evaluate(run.state, 0) if held_out else {}
  last = run.fit(
    lambda state, batch: jitted(state, reference_params, batch, base),
    DeviceBatches(iterator, lambda batch: sharding.shard_rows(batch, mesh)),
    step_flops=lambda rows: flops.dpo_step_flops(
      model_config, rows, layout.row_length, reference_params is not None, iterator.answer_positions or None
    ),
    data_identity=key,
    evaluate=evaluate if held_out else None,
    stop_early=stop_early,
    rates=lambda values, seconds: {"pairs_per_s": config.batch_size / seconds},
    desc="dpo",
    progress_keys=("loss", "rewards/accuracies", "pairs_per_s"),
  )
  steps_run = int(run.state.step)  # num_steps, or fewer where the run stopped early
  final = evaluate(run.state, steps_run) if held_out else {}
  for step, values in best_step.logged_held_out(workdir).items():  # evaluated before a resume, by the killed run
    held_out_metrics.setdefault(step, values)

  # 4. Export.
  summary = {
    "pairs": stats,
    "reference": None
    if reference_free
    else {"model": config.reference_model or config.model, "identity": reference_identity},
    "num_steps": config.num_steps,
    "steps_run": steps_run,
    "layout": {
      "packing": layout.packing,
      "row_length": layout.row_length,
      "chosen_only": layout.chosen_only,
      "rows_per_step": rows_per_step,  # the most a step holds
      "answer_positions": iterator.answer_positions,  # per row, where the output layer runs; 0: everywhere
    },
    "heldout_before": initial,
    "heldout_after": final,
    "heldout_curve": {str(step): values for step, values in sorted(held_out_metrics.items())},
    "last_step": last,
  }
  if best is not None:
    summary["selected"] = {"step": best.step, "heldout_loss": best.loss, "by": selection_key(config)}
    if best.step != steps_run:
      loss = " ".join(filter(None, (best_step.other_selection_loss(config), "loss")))
      print(f"keeping the step of the lowest held-out {loss}: step {best.step} ({best.loss:.4f})")
      run.state = run.state.replace(params=best.restore(run.state.params))
      summary["heldout_after"] = held_out_metrics.get(best.step) or evaluate(run.state, best.step)
  export_dir = run.export()
  if export_dir is not None:
    summary["export_dir"] = str(export_dir)
  io.write_json(workdir / "refine_summary.json", summary)
  if final:
    print(
      f"held-out reward accuracy {initial['eval/rewards/accuracies']:.3f} → {final['eval/rewards/accuracies']:.3f}, "
      f"margin {initial['eval/rewards/margins']:.4f} → {final['eval/rewards/margins']:.4f}"
    )
  return summary
