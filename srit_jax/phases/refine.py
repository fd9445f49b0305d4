"""`srit-jax refine`: self-refinement of the instructed student — sample → pairs → DPO → export.

    srit-jax refine --config=configs/refine.py --config.model=runs/sft/export --workdir=runs/refine

1. The student answers each training question (CoT and direct prompts); generations stream
   to WORKDIR/samples.*.jsonl, so a killed run keeps what it sampled.
2. Pairs by the configured strategy (srit_jax/preference_pairs.py) → pairs.jsonl (training),
   heldout_pairs.jsonl (a fixed share of questions, for reward accuracy), pair_stats.json.
3. DPO against a frozen reference = the student as loaded. By default the reference
   log-probabilities are computed once over the fixed pairs (reference_logps.npz) and the
   reference tree is dropped; otherwise it runs inside each step under stop_gradient.
   Checkpoints, exact resume, progress, metrics (JSONL + TensorBoard) and the NaN guard are
   the SFT loop's. Held-out reward accuracy and margin are logged every eval_every steps.
4. Export to WORKDIR/export (HF format) and refine_summary.json.
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import jax
import numpy as np

from srit_jax import sharding
from srit_jax.conversion import hf_checkpoint, loading
from srit_jax.data import pair_batches as dpo_data
from srit_jax.data import preference_pairs
from srit_jax.data import sft_examples as sft_data
from srit_jax.generation.sampler import SamplingSettings
from srit_jax.phases import demos as demos_lib
from srit_jax.tasks import prompts
from srit_jax.tasks.example import Example
from srit_jax.training import dpo_step as dpo
from srit_jax.training import flops, optimizer
from srit_jax.training import loop as train_loop
from srit_jax.training import sft_step as train_step_lib


def _teacher_demos(path: str) -> dict[tuple[str, str], str]:
  if not path:
    return {}
  demos = {}
  for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
    record = json.loads(line)
    if record.get("correct", True):
      demos.setdefault((record["task"], str(record["id"])), record["output"])
  return demos


def training_questions(config) -> list[Example]:
  """The task's training split, or (questions="demos") the questions of the demonstrations file."""
  if config.questions == "task":
    return demos_lib.training_examples(config)
  if config.questions != "demos":
    raise ValueError(f"questions {config.questions!r} is not 'task' or 'demos'")
  if not config.demos_file:
    raise ValueError("questions='demos' needs demos_file")
  examples, seen = [], set()
  for line in pathlib.Path(config.demos_file).read_text(encoding="utf-8").splitlines():
    record = json.loads(line)
    key = (record["task"], str(record["id"]))
    if key not in seen:
      seen.add(key)
      examples.append(
        Example(
          record["task"],
          str(record["id"]),
          record["question"],
          record["gold"],
          record["answer_type"],
          tuple(record["choices"]),
        )
      )
  return examples[: config.limit] if config.limit else examples


def _log_prob_fn(config, mesh, chunk_size):
  def side_log_probs(params, side):
    return dpo.sequence_log_probs(config, params, side, mesh=mesh, chunk_size=chunk_size)[0]

  return jax.jit(side_log_probs)


def pair_log_probs(log_prob_fn, params, pairs, row_length, mesh, batch_size) -> tuple[np.ndarray, np.ndarray]:
  """(chosen, rejected) summed answer log-probs of every pair under `params`, in pair order."""
  chosen, rejected = [], []
  for start in range(0, len(pairs), batch_size):
    indices = list(range(start, min(start + batch_size, len(pairs))))
    padded = indices + [indices[0]] * (batch_size - len(indices))  # whole batches: one compilation
    batch = dpo_data.shard_pair_batch(dpo_data.make_pair_batch(pairs, padded, row_length), mesh)
    chosen.append(sharding.to_host(log_prob_fn(params, batch["chosen"]))[: len(indices)])
    rejected.append(sharding.to_host(log_prob_fn(params, batch["rejected"]))[: len(indices)])
  return np.concatenate(chosen), np.concatenate(rejected)


def _reference_log_probs(path: pathlib.Path, key: str, compute) -> tuple[np.ndarray, np.ndarray]:
  """Cached in `path` under `key` (a hash of the pairs and the model), computed once."""
  if path.exists():
    saved = np.load(path)
    if str(saved["key"]) == key:
      return saved["chosen"], saved["rejected"]
  chosen, rejected = compute()
  partial = path.with_suffix(".partial.npz")
  np.savez(partial, key=key, chosen=chosen, rejected=rejected)
  partial.replace(path)
  return chosen, rejected


def reward_metrics(policy, reference, beta: float) -> dict:
  """Held-out DPO rewards: accuracy (chosen reward above rejected), mean margin, sigmoid loss."""
  chosen_rewards = beta * (policy[0] - reference[0])
  rejected_rewards = beta * (policy[1] - reference[1])
  margins = chosen_rewards - rejected_rewards
  return {
    "eval/rewards/accuracies": float(np.mean(margins > 0)),
    "eval/rewards/margins": float(np.mean(margins)),
    "eval/loss": float(np.mean(np.logaddexp(0.0, -margins))),
  }


def run(config, workdir: str | pathlib.Path, *, progress: bool = True) -> dict:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(sharding.MeshConfig(config.mesh.data, config.mesh.fsdp, config.mesh.tensor))
  sharding.check_batch_divides(config.batch_size, mesh, "batch_size (pairs per step)", config.num_microbatches)
  model = loading.load_model(
    config.model, mesh=mesh, dtype=config.dtype, param_dtype=config.param_dtype, remat_policy=config.remat_policy
  )

  # 1. The student's own answers.
  examples = training_questions(config)
  samples = preference_pairs.sample_answers(
    model,
    examples,
    workdir,
    num_samples={prompts.COT: config.num_cot_samples, prompts.DIRECT: config.num_direct_samples},
    max_new_tokens={prompts.COT: config.max_new_tokens, prompts.DIRECT: config.max_new_tokens_direct},
    settings=SamplingSettings(config.temperature, config.top_k, config.top_p),
    batch_size=config.generate_batch_size,
    seed=config.seed,
    chat_template=config.use_chat_template,
    stop_strings=tuple(config.stop_strings),
    progress=progress,
  )

  # 2. Pairs.
  pairs, stats = preference_pairs.build_pairs(
    examples,
    samples,
    strategy=config.strategy,
    max_pairs_per_question=config.max_pairs_per_question,
    teacher_demos=_teacher_demos(config.demos_file) if config.teacher_fallback else None,
  )
  train_pairs, held_out_pairs = preference_pairs.split_held_out(pairs, config.heldout_fraction, config.seed)
  demos_lib.write_jsonl(workdir / "pairs.jsonl", train_pairs)
  demos_lib.write_jsonl(workdir / "heldout_pairs.jsonl", held_out_pairs)
  stats.update(train_pairs=len(train_pairs), heldout_pairs=len(held_out_pairs))
  (workdir / "pair_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
  print(
    f"{stats['questions']} questions, {stats['questions_with_correct_cot']} with a correct CoT sample "
    f"(CoT {stats['cot_correct']}/{stats['cot_samples']}, direct {stats['direct_correct']}/{stats['direct_samples']} "
    f"correct); {len(train_pairs)} training pairs, {len(held_out_pairs)} held out ({config.strategy})"
  )

  # 3. DPO.
  token_stats = sft_data.TokenizeStats()
  tokenized = dpo_data.tokenize_pairs(
    model.tokenizer, train_pairs, config.max_length, use_chat_template=config.use_chat_template, stats=token_stats
  )
  held_out = dpo_data.tokenize_pairs(
    model.tokenizer, held_out_pairs, config.max_length, use_chat_template=config.use_chat_template
  )
  if not tokenized:
    raise ValueError(
      f"no preference pair to train on ({stats['pairs']} built, {token_stats.dropped_too_long} too long)"
    )
  log_prob_fn = _log_prob_fn(model.config, mesh, config.chunk_size)
  eval_batch = max(config.batch_size, 2 * mesh.devices.size)
  fingerprint = hashlib.sha256(
    json.dumps([str(config.model), config.max_length, train_pairs, held_out_pairs], sort_keys=True).encode()
  ).hexdigest()

  reference_params = jax.tree.map(lambda x: x.astype(model.config.dtype).copy(), model.params)
  reference = held_out_reference = None
  if config.precompute_reference:
    reference = _reference_log_probs(
      workdir / "reference_logps.npz",
      fingerprint,
      lambda: pair_log_probs(log_prob_fn, reference_params, tokenized, config.max_length, mesh, eval_batch),
    )
  if held_out:
    held_out_reference = _reference_log_probs(
      workdir / "heldout_reference_logps.npz",
      fingerprint,
      lambda: pair_log_probs(log_prob_fn, reference_params, held_out, config.max_length, mesh, eval_batch),
    )
  if config.precompute_reference:
    reference_params = None  # the frozen tree is no longer needed: its log-probs are

  tx = optimizer.make_optimizer(config.optimizer, config.num_steps)
  state = train_step_lib.create_train_state(model.params, tx)
  state = jax.device_put(state, train_step_lib.state_shardings(state, model.config, mesh))
  iterator = dpo_data.PairBatchIterator(
    tokenized, batch_size=config.batch_size, row_length=config.max_length, seed=config.seed, reference=reference
  )
  loss_options = dict(
    beta=config.beta,
    loss_type=config.loss_type,
    label_smoothing=config.label_smoothing,
    nll_weight=config.nll_weight,
    num_microbatches=config.num_microbatches,
    chunk_size=config.chunk_size,
  )
  jitted = dpo.jit_dpo_step(
    state, model.config, tx, mesh, precomputed_reference=config.precompute_reference, **loss_options
  )

  def step_fn(state, batch):
    return jitted(state, reference_params, batch)

  schedule = optimizer.learning_rate_schedule(config.optimizer, config.num_steps)
  step_flops = flops.dpo_step_flops(model.config, config.batch_size, config.max_length, not config.precompute_reference)
  peak = flops.device_peak_flops(config.dtype)

  def derived_metrics(step, values, seconds):
    return {
      "learning_rate": float(schedule(step - 1)),
      "pairs_per_s": config.batch_size / seconds,
      "tokens_per_s": values["tokens"] / seconds,
      "mfu": step_flops / seconds / peak,
    }

  held_out_metrics: dict[int, dict] = {}  # by step: the last step's is logged and reported, computed once

  def evaluate(state, step):
    if step not in held_out_metrics:
      policy = pair_log_probs(log_prob_fn, state.params, held_out, config.max_length, mesh, eval_batch)
      held_out_metrics[step] = reward_metrics(policy, held_out_reference, config.beta)
    return held_out_metrics[step]

  initial = evaluate(state, 0) if held_out else {}
  state, last = train_loop.run_steps(
    workdir=workdir,
    state=state,
    step_fn=step_fn,
    next_batch=lambda: dpo_data.shard_pair_batch(next(iterator), mesh),
    data_state=iterator.get_state,
    restore_data_state=iterator.set_state,
    num_steps=config.num_steps,
    save_every=config.save_every,
    keep_checkpoints=config.keep_checkpoints,
    async_checkpoints=config.async_checkpoints,
    derived_metrics=derived_metrics,
    evaluate=evaluate if held_out else None,
    eval_every=config.eval_every,
    desc="dpo",
    progress_keys=("loss", "rewards/accuracies", "pairs_per_s"),
  )
  final = evaluate(state, config.num_steps) if held_out else {}

  # 4. Export.
  summary = {"pairs": stats, "heldout_before": initial, "heldout_after": final, "last_step": last}
  if config.export:
    export_dir = workdir / "export"
    hf_checkpoint.save_hf_checkpoint(state.params, model.config, export_dir, tokenizer=model.tokenizer)
    summary["export_dir"] = str(export_dir)
    print(f"exported to {export_dir}")
  (workdir / "refine_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  if final:
    print(
      f"held-out reward accuracy {initial['eval/rewards/accuracies']:.3f} → {final['eval/rewards/accuracies']:.3f}, "
      f"margin {initial['eval/rewards/margins']:.4f} → {final['eval/rewards/margins']:.4f}"
    )
  return summary
