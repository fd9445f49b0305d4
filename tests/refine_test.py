"""`srit-jax refine` end to end: sampling, pairs, DPO with the reference precomputed or in the
step, kill -9 and resume, and the real SmolLM2 learning to prefer its own correct reasoning."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
  SHARED_DATA,
  checkpoint_being_saved,
  kill_at_moments,
  load_config,
  save_tiny_model,
  subprocess_env,
)
from safetensors.numpy import load_file

from srit_jax import preemption
from srit_jax.configs import checks
from srit_jax.data.preference_pairs import ScoredAnswer
from srit_jax.generation.jsonl import Completion
from srit_jax.phases import refine, student_answers
from srit_jax.tasks import prompts, synthetic
from srit_jax.tasks.example import NUMBER, Example
from srit_jax.training import dpo_step, pair_scoring


def _demos_file(path, n=16):
  """The reference teacher's demonstrations for the first n arith training questions."""
  with open(path, "w") as f:
    for example in synthetic.generate("arith", "train", size=n):
      f.write(json.dumps({"task": "arith", "id": example.id, "output": example.solution, "correct": True}) + "\n")
  return path


def _tiny_config(model_dir, demos_file, **overrides):
  config = load_config("refine", "tiny")
  config.model = str(model_dir)
  config.teacher_fallback, config.demos_file = True, str(demos_file)
  config.mesh.update(data=1, fsdp=4, tensor=1)
  config.update(overrides)
  return config


@pytest.mark.slow
def test_refine_runs_with_precomputed_and_in_step_reference(tiny_student, tmp_path):
  demos_file = _demos_file(tmp_path / "demos.jsonl")
  runs = {}
  # The in-step run also accumulates its 8 pairs over 2 microbatches, and a third lays out one
  # row per side instead of shared-prompt rows: each the same update.
  for name, precompute, microbatches, packing in (
    ("precomputed", True, 1, "auto"),
    ("in_step", False, 2, "auto"),
    ("one_row_per_side", True, 1, "none"),
  ):
    workdir = tmp_path / name
    config = _tiny_config(
      tiny_student,
      demos_file,
      precompute_reference=precompute,
      num_steps=3,
      batch_size=8,
      num_microbatches=microbatches,
      pair_packing=packing,
    )
    summary = refine.run(config, workdir, progress=False)
    assert summary["layout"]["packing"] == ("shared_prompt" if packing == "auto" else "none")
    stats = json.loads((workdir / "pair_stats.json").read_text())
    # A random tiny student solves nothing: every chosen answer is the teacher's demonstration.
    assert stats["questions"] == 16 and stats["pairs_teacher_chosen"] == stats["pairs"] > 0
    pairs = [json.loads(line) for line in (workdir / "pairs.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (workdir / "heldout_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) + len(held_out) == stats["pairs"] and held_out
    assert not {p["id"] for p in pairs} & {p["id"] for p in held_out}
    assert all(p["rejected_style"] == "direct" and p["prompt"].endswith("step by step.") for p in pairs)
    # Direct answers open with the answer phrase and none was cut by the length limit.
    assert all(p["rejected"].startswith("The answer is") and p["rejected_stop_reason"] != "length" for p in pairs)
    direct = [json.loads(line) for line in (workdir / "samples.direct.jsonl").read_text().splitlines()]
    assert {d["response_prefix"] for d in direct} == {"The answer is"}
    assert (workdir / "reference_logps.npz").exists() == precompute
    assert summary["heldout_before"]["eval/rewards/margins"] == 0.0  # policy = reference at step 0
    assert summary["heldout_before"]["eval/loss"] == pytest.approx(np.log(2))
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["loss"] == pytest.approx(np.log(2), abs=1e-5)
    assert {"rewards/accuracies", "rewards/margins", "logps/chosen", "pairs_per_s", "mfu"} <= set(metrics[0])
    runs[name] = load_file(str(workdir / "export" / "model.safetensors"))
  for other in ("in_step", "one_row_per_side"):  # the runs train to the same parameters
    for name, value in runs["precomputed"].items():
      np.testing.assert_allclose(runs[other][name], value, atol=2e-5, err_msg=f"{other}: {name}")


@pytest.mark.parametrize("loss_type,label_smoothing", [("ipo", 0.0), ("sigmoid", 0.2), ("hinge", 0.0), ("dpop", 0.0)])
def test_held_out_metrics_are_the_runs_own_dpo_loss(loss_type, label_smoothing):
  rng = np.random.default_rng(0)
  policy, reference = rng.normal(-20, 3, (2, 16)), rng.normal(-20, 3, (2, 16))
  beta = 0.3
  lengths = rng.integers(3, 40, 16).astype(np.float32)
  options = dict(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing, dpop_lambda=2.0)
  metrics = refine.reward_metrics(policy, reference, (lengths, lengths[::-1]), **options)
  # By hand: h is the policy's log-ratio margin over the reference's.
  h = (policy[0] - reference[0]) - (policy[1] - reference[1])
  chosen_fall = np.maximum(0.0, reference[0] - policy[0])
  log_sigmoid = lambda x: -np.logaddexp(0.0, -x)
  expected = {
    "ipo": (h - 1 / (2 * beta)) ** 2,
    "sigmoid": -(1 - label_smoothing) * log_sigmoid(beta * h) - label_smoothing * log_sigmoid(-beta * h),
    "hinge": np.maximum(0.0, 1 - beta * h),
    "dpop": -log_sigmoid(beta * (h - 2.0 * chosen_fall)),
  }[loss_type]
  np.testing.assert_allclose(metrics["eval/loss"], expected.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["eval/rewards/margins"], beta * h.mean(), rtol=1e-5)
  assert metrics["eval/rewards/accuracies"] == pytest.approx(np.mean(h > 0))
  nll = np.mean(-policy[0] / lengths)
  np.testing.assert_allclose(metrics["eval/nll/chosen"], nll, rtol=1e-5)
  with_nll = refine.reward_metrics(policy, reference, (lengths, lengths[::-1]), nll_weight=0.5, **options)
  np.testing.assert_allclose(with_nll["eval/loss"], expected.mean() + 0.5 * nll, rtol=1e-5)


def test_a_selection_loss_is_reported_beside_the_runs_own_with_the_same_settings():
  rng = np.random.default_rng(1)
  policy, reference = rng.normal(-20, 3, (2, 16)), rng.normal(-20, 3, (2, 16))
  lengths = (rng.integers(3, 40, 16).astype(np.float32),) * 2
  options = dict(beta=0.3, dpop_lambda=2.0, nll_weight=0.5)
  dpop = refine.reward_metrics(policy, reference, lengths, loss_type="dpop", selection_loss_type="sigmoid", **options)
  dpo = refine.reward_metrics(policy, reference, lengths, loss_type="sigmoid", **options)
  # The penalty left out: the DPO term with the run's beta and NLL term, as a sigmoid run's own loss.
  np.testing.assert_allclose(dpop["eval/selection_loss"], dpo["eval/loss"], rtol=1e-6)
  assert dpop["eval/loss"] > dpo["eval/loss"]  # some chosen answers fall below the reference
  assert "eval/selection_loss" not in dpo
  same = refine.reward_metrics(policy, reference, lengths, loss_type="dpop", selection_loss_type="dpop", **options)
  assert "eval/selection_loss" not in same  # the run's own loss is not repeated


def test_a_run_keeps_the_step_of_lowest_held_out_selection_loss_not_its_own(tiny_student, tmp_path):
  # Big steps: DPO's loss falls at each step while the margin overshoots IPO's target 1 / (2 beta).
  config = _best_heldout_config(tiny_student, tmp_path, num_steps=4, learning_rate=3e-2)
  config.selection_loss_type = "ipo"
  summary = refine.run(config, tmp_path / "run", progress=False)
  curve = {int(step): values for step, values in summary["heldout_curve"].items()}
  assert sorted(curve) == [0, 1, 2, 3, 4]
  own = {step: values["eval/loss"] for step, values in curve.items()}
  selection = {step: values["eval/selection_loss"] for step, values in curve.items()}
  best = min(selection, key=selection.get)
  assert best != min(own, key=own.get)  # the two losses choose differently here
  assert summary["selected"] == {"step": best, "heldout_loss": selection[best], "by": "eval/selection_loss"}
  assert summary["heldout_after"]["eval/selection_loss"] == pytest.approx(selection[best], abs=1e-6)
  assert json.loads((tmp_path / "run" / "run.json").read_text())["selection_loss"] == "ipo"  # for status
  # At the start the policy is the reference: every margin 0, IPO's term (1 / (2 beta))^2, plus the NLL term.
  start = curve[0]
  assert start["eval/selection_loss"] == pytest.approx(1 / (4 * config.beta**2) + start["eval/nll/chosen"], rel=1e-5)


@pytest.mark.parametrize(
  "settings, message",
  [
    (dict(selection_loss_type="sigmoid"), "selection_loss_type = 'sigmoid': it chooses the step kept"),
    (
      dict(loss_type="simpo", selection_loss_type="sigmoid", select_checkpoint="best_heldout", eval_every=1),
      "selection_loss_type = 'sigmoid' reads a reference; loss_type 'simpo' has none",
    ),
    (dict(selection_loss_type="dpo"), "selection_loss_type = 'dpo': must be one of"),
  ],
)
def test_a_selection_loss_that_cannot_choose_is_refused(tiny_student, tmp_path, settings, message):
  config = _tiny_config(tiny_student, _demos_file(tmp_path / "demos.jsonl"), **settings)
  with pytest.raises(checks.ConfigError, match=message):
    refine.run(config, tmp_path / "run", progress=False)


@pytest.mark.parametrize("loss_type, lora_rank", [("orpo", 0), ("simpo", 4)])
def test_a_reference_free_loss_loads_and_scores_no_reference_and_reports_its_own_rewards(
  tiny_student, tmp_path, loss_type, lora_rank
):
  config = _tiny_config(tiny_student, _demos_file(tmp_path / "demos.jsonl"), loss_type=loss_type, num_steps=2, beta=0.5)
  config.lora.rank = lora_rank  # under LoRA: no copy of the adapters as a reference either
  workdir = tmp_path / "run"
  summary = refine.run(config, workdir, progress=False)
  assert summary["reference"] is None
  assert not (workdir / "reference_logps.npz").exists() and not (workdir / "heldout_reference_logps.npz").exists()
  assert summary["layout"]["chosen_only"] is False  # the rejected answers are read
  before = summary["heldout_before"]
  # The rewards are beta times each side's mean log-prob per token: below zero, with no reference.
  assert before["eval/rewards/chosen"] < 0 and before["eval/rewards/rejected"] < 0
  assert before["eval/loss"] > 0 and (workdir / "export" / "model.safetensors").exists()


def test_dpop_without_its_penalty_trains_as_dpo_and_with_it_otherwise(tiny_student, tmp_path):
  demos_file = _demos_file(tmp_path / "demos.jsonl")
  # Another random model as the reference: some chosen answers start less likely than under it.
  reference = save_tiny_model(tmp_path / "reference", seed=1, eos_probability=0.25)
  exported, before = {}, {}
  for name, loss_type, lam in (("dpo", "sigmoid", 50.0), ("dpop_0", "dpop", 0.0), ("dpop_50", "dpop", 50.0)):
    config = _tiny_config(
      tiny_student, demos_file, loss_type=loss_type, dpop_lambda=lam, num_steps=2, reference_model=str(reference)
    )
    before[name] = refine.run(config, tmp_path / name, progress=False)["heldout_before"]
    exported[name] = load_file(str(tmp_path / name / "export" / "model.safetensors"))
  for key, value in exported["dpo"].items():
    np.testing.assert_array_equal(exported["dpop_0"][key], value, err_msg=key)
  assert before["dpop_0"] == before["dpo"]
  # The penalty: a higher held-out loss from the start, and another update.
  assert before["dpop_50"]["eval/loss"] > before["dpo"]["eval/loss"]
  assert before["dpop_50"]["eval/rewards/margins"] == before["dpo"]["eval/rewards/margins"]
  assert any(not np.array_equal(exported["dpop_50"][k], v) for k, v in exported["dpo"].items())


def test_a_reference_model_for_a_reference_free_loss_is_refused(tiny_student, tmp_path):
  config = _tiny_config(
    tiny_student, _demos_file(tmp_path / "demos.jsonl"), loss_type="simpo", reference_model=str(tiny_student)
  )
  with pytest.raises(checks.ConfigError, match="reference_model: loss_type 'simpo' reads no reference"):
    refine.run(config, tmp_path / "run", progress=False)


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "orpo"])
def test_label_smoothing_is_refused_for_a_loss_that_has_none(tiny_student, tmp_path, loss_type):
  config = _tiny_config(tiny_student, _demos_file(tmp_path / "demos.jsonl"), loss_type=loss_type, label_smoothing=0.1)
  with pytest.raises(checks.ConfigError, match=f"label_smoothing = 0.1: loss_type '{loss_type}' has none"):
    refine.run(config, tmp_path / "run", progress=False)


def test_ipo_held_out_loss_at_step_zero_is_its_closed_form_and_each_program_is_traced_once(
  tiny_student, tmp_path, monkeypatch
):
  traced = []

  def pair_log_probs_and_count(*args, **kwargs):
    traced.append(sorted(args[2]))  # the batch's fields
    return pair_log_probs(*args, **kwargs)

  pair_log_probs = dpo_step.pair_log_probs
  monkeypatch.setattr(dpo_step, "pair_log_probs", pair_log_probs_and_count)
  config = _tiny_config(tiny_student, _demos_file(tmp_path / "demos.jsonl"), loss_type="ipo", num_steps=1)
  summary = refine.run(config, tmp_path / "run", progress=False)
  # The policy is the reference: every margin is 0 and IPO's loss is (0 - 1/(2 beta))^2.
  assert summary["heldout_before"]["eval/loss"] == pytest.approx(1 / (4 * config.beta**2))
  # The training pairs' reference pass, the held-out pairs' (their reference, then the policy at
  # steps 0 and 1) and the DPO step's: one trace each, none after the programs are released.
  assert sorted(summary["heldout_curve"]) == ["0", "1"] and len(traced) == 3, traced


def test_the_reference_pass_shows_its_progress(tiny_student, tmp_path, capfd):
  demos_file = _demos_file(tmp_path / "demos.jsonl")
  config = _tiny_config(tiny_student, demos_file, num_steps=1, batch_size=4, precompute_reference=True)
  refine.run(config, tmp_path / "run", progress=True)
  pairs = len((tmp_path / "run" / "pairs.jsonl").read_text().splitlines())
  batches = -(-pairs // max(4, 2 * 4))  # at least two pairs for each of the mesh's 4 devices
  assert f"reference log-probs: 100%|██████████| {batches}/{batches}" in capfd.readouterr().err


def test_a_preempted_reference_pass_keeps_its_finished_batches_and_goes_on_from_them(
  tiny_student, tmp_path, monkeypatch
):
  config = _tiny_config(tiny_student, _demos_file(tmp_path / "demos.jsonl"), num_steps=2, batch_size=4)
  config.mesh.update(fsdp=1)  # batches of 4 pairs: several of them
  refine.run(config, tmp_path / "full", progress=False)
  full = np.load(tmp_path / "full" / "reference_logps.npz")
  batches = -(-len(full["chosen"]) // 4)
  assert batches > 3

  reference_batches = []  # the pairs scored so far, after each batch of this run's reference pass
  score = pair_scoring.PairScorer.__call__

  def counted(scorer, params, base=None, *, desc=None, on_batch=None, **options):
    def after_batch(chosen, rejected):
      if desc == "reference log-probs":
        reference_batches.append(len(chosen))
      if on_batch is not None:
        on_batch(chosen, rejected)

    return score(scorer, params, base, desc=desc, on_batch=after_batch, **options)

  def killed_after(batches):
    def requested():
      if len(reference_batches) == batches + 1:
        raise KeyboardInterrupt("killed")  # before the batch in flight is kept
      return False

    return requested

  monkeypatch.setattr(pair_scoring.PairScorer, "__call__", counted)
  workdir, kept = tmp_path / "preempted", tmp_path / "preempted" / "reference_logps.so_far.npz"
  # Killed without notice: what the last minute's keep wrote is there (here, kept after every batch).
  monkeypatch.setattr(pair_scoring, "KEEP_EVERY_S", 0.0)
  monkeypatch.setattr(preemption, "requested", killed_after(2))
  with pytest.raises(KeyboardInterrupt):
    refine.run(config, workdir, progress=True)
  for side in ("chosen", "rejected"):
    np.testing.assert_array_equal(np.load(kept)[side], full[side][:8])
  # A notice after the rerun's first batch: the 12 pairs scored so far are kept.
  monkeypatch.setattr(pair_scoring, "KEEP_EVERY_S", 60.0)
  reference_batches.clear()
  monkeypatch.setattr(preemption, "requested", lambda: len(reference_batches) == 1)
  with pytest.raises(preemption.Preempted, match=r"the log-probs of 12 of \d+ pairs are kept in"):
    refine.run(config, workdir, progress=True)
  assert reference_batches == [12] and not (workdir / "reference_logps.npz").exists()
  for side in ("chosen", "rejected"):
    np.testing.assert_array_equal(np.load(kept)[side], full[side][:12])

  reference_batches.clear()
  monkeypatch.setattr(preemption, "requested", lambda: False)
  refine.run(config, workdir, progress=True)
  assert reference_batches == [min(4 * b, len(full["chosen"])) for b in range(4, batches + 1)]  # only the rest
  resumed = np.load(workdir / "reference_logps.npz")
  for side in ("chosen", "rejected"):
    np.testing.assert_array_equal(resumed[side], full[side])
  assert not kept.exists()
  exported = [load_file(str(d / "export" / "model.safetensors")) for d in (tmp_path / "full", workdir)]
  for name, value in exported[0].items():
    np.testing.assert_array_equal(exported[1][name], value, err_msg=name)


def test_slip_corrections_continue_each_wrong_answer_from_its_slip_set_right(monkeypatch, tmp_path):
  seen = {}

  def continue_with_seven(model, records, out_path, **options):
    seen.update(records=records, out_path=out_path, options=options)
    return [[Completion(r["response_prefix"] + ". The answer is 7.", "eos")] for r in records]

  monkeypatch.setattr(student_answers, "generate_texts", continue_with_seven)
  examples = [Example("arith", "0", "What is 3 + 4?", "7", NUMBER), Example("arith", "1", "And 4 + 5?", "9", NUMBER)]
  cot = [
    [ScoredAnswer("cot", 0, "3 + 4 = 8. The answer is 8.", "8", False)],
    [ScoredAnswer("cot", 0, "4 + 5 = 8. The answer is 9.", "9", True)],  # right in the end: left alone
  ]
  config = load_config("refine")
  corrections = student_answers.sample_corrections(None, examples, cot, tmp_path, config, progress=False)
  (record,) = seen["records"]
  assert record == {"prompt": prompts.prompt(examples[0], "cot"), "response_prefix": "3 + 4 = 7", "id": "arith/0/0"}
  assert (
    seen["out_path"] == tmp_path / "samples.corrected.jsonl"
    and "samples.corrected.jsonl" in student_answers.SAMPLE_FILES
  )
  assert seen["options"]["settings"].temperature == 0.0  # the student's own most likely way on
  assert corrections == [{0: ScoredAnswer("cot", 0, "3 + 4 = 7. The answer is 7.", "7", True)}, {}]


def test_another_draw_samples_the_same_questions_with_other_seeds(monkeypatch, tmp_path):
  seeds = []

  def record_seed(model, records, out_path, **options):
    seeds.append(options["seed"])
    return [[Completion("The answer is 7.", "eos")] * options["num_samples"] for _ in records]

  monkeypatch.setattr(student_answers, "generate_texts", record_seed)
  config = load_config("refine")
  config.update(task="wordmath", limit=20, num_direct_samples=0)
  questions = student_answers.training_questions(config)
  student_answers.sample_answers(None, questions, tmp_path, config, progress=False)
  config.sampling_seed = 1
  assert student_answers.training_questions(config) == questions  # the questions are the seed's
  student_answers.sample_answers(None, questions, tmp_path, config, progress=False)
  assert seeds[0] == config.seed and seeds[1] != seeds[0]
  config.round = 2  # a later round draws apart from both
  student_answers.sample_answers(None, questions, tmp_path, config, progress=False)
  assert len(set(seeds)) == 3


def test_new_questions_are_training_questions_no_demonstration_answers(tmp_path):
  config = load_config("refine")
  config.update(task="arith", limit=8, new_questions=5, demos_file=str(_demos_file(tmp_path / "demos.jsonl", n=16)))
  questions = student_answers.training_questions(config)
  taught = [e.id for e in synthetic.generate("arith", "train", size=16)]
  assert [q.id for q in questions[:8]] == taught[:8]
  new = [q.id for q in questions[8:]]
  assert len(new) == 5 and not set(new) & set(taught)
  config.new_questions = 0
  assert len(student_answers.training_questions(config)) == 8


def _best_heldout_config(tiny_student, tmp_path, *, num_steps, learning_rate):
  """DPO + NLL evaluated on the held-out pairs every step, the step of lowest held-out loss kept."""
  config = _tiny_config(
    tiny_student,
    _demos_file(tmp_path / "demos.jsonl"),
    num_steps=num_steps,
    eval_every=1,
    select_checkpoint="best_heldout",
    nll_weight=1.0,
  )
  config.optimizer.learning_rate = learning_rate
  return config


def test_best_heldout_exports_the_evaluated_step_of_lowest_held_out_loss(tiny_student, tmp_path):
  # big steps: the held-out loss moves, not always down
  config = _best_heldout_config(tiny_student, tmp_path, num_steps=4, learning_rate=3e-2)
  summary = refine.run(config, tmp_path / "run", progress=False)
  curve = {int(step): values["eval/loss"] for step, values in summary["heldout_curve"].items()}
  assert sorted(curve) == [0, 1, 2, 3, 4]
  best = min(curve, key=curve.get)
  assert summary["selected"] == {"step": best, "heldout_loss": curve[best], "by": "eval/loss"}
  # The exported student is that step's: its held-out loss, measured again, is the best one.
  assert summary["heldout_after"]["eval/loss"] == pytest.approx(curve[best], abs=1e-6)


def test_early_stopping_ends_after_patience_evaluations_without_a_lower_held_out_loss(tiny_student, tmp_path):
  patience = 2
  # big steps: the held-out loss falls, then rises
  config = _best_heldout_config(tiny_student, tmp_path, num_steps=12, learning_rate=1.5e-1)
  config.early_stopping_patience = patience
  workdir = tmp_path / "run"
  summary = refine.run(config, workdir, progress=False)
  curve = {int(step): values["eval/loss"] for step, values in summary["heldout_curve"].items()}
  stop = summary["steps_run"]
  assert 0 < stop < config.num_steps, curve  # it stopped early
  assert sorted(curve) == list(range(stop + 1))

  def lowest_up_to(step):
    return min(range(step + 1), key=lambda s: (curve[s], s))

  # The first step `patience` evaluations past the lowest loss so far: not one step later.
  assert stop - lowest_up_to(stop) == patience
  assert all(step - lowest_up_to(step) < patience for step in range(stop))
  kept = lowest_up_to(stop)
  assert summary["selected"] == {"step": kept, "heldout_loss": curve[kept], "by": "eval/loss"}
  assert summary["heldout_after"]["eval/loss"] == pytest.approx(curve[lowest_up_to(stop)], abs=1e-6)

  def training_steps():
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "eval/loss" not in r]

  assert training_steps() == list(range(1, stop + 1))

  # Run again: the stopped run is not trained on, and exports the same student.
  exported = load_file(str(workdir / "export/model.safetensors"))
  again = refine.run(config, workdir, progress=False)
  assert again["steps_run"] == stop and again["selected"] == summary["selected"]
  assert training_steps() == list(range(1, stop + 1))
  for name, value in load_file(str(workdir / "export/model.safetensors")).items():
    np.testing.assert_array_equal(value, exported[name], err_msg=name)


def test_early_stopping_needs_the_held_out_loss_and_its_best_step(tiny_student, tmp_path):
  config = _tiny_config(tiny_student, _demos_file(tmp_path / "demos.jsonl"), eval_every=1, early_stopping_patience=3)
  with pytest.raises(checks.ConfigError, match="early_stopping_patience = 3: stopping early needs select_checkpoint"):
    refine.run(config, tmp_path / "run", progress=False)
  assert not (tmp_path / "run" / "samples.cot.jsonl").exists()


@pytest.mark.long  # 2 minutes; preemption_test resumes DPO exactly on one process
def test_killed_refine_resumes_to_the_same_parameters_bit_for_bit(tiny_student, tmp_path):
  demos_file = _demos_file(tmp_path / "demos.jsonl")
  base = [
    sys.executable,
    "-m",
    "srit_jax.cli",
    "refine",
    "--config=configs/refine.py:tiny",
    f"--config.model={tiny_student}",
    "--config.teacher_fallback=True",
    f"--config.demos_file={demos_file}",
    "--config.mesh.fsdp=1",
    "--config.num_steps=8",
    "--config.eval_every=2",
  ]
  env = subprocess_env(1)
  root = os.path.dirname(os.path.dirname(__file__))
  subprocess.run(
    [*base, f"--workdir={tmp_path / 'full'}"], check=True, env=env, capture_output=True, timeout=600, cwd=root
  )

  workdir = tmp_path / "killed"
  checkpoints = workdir / "checkpoints"
  samples = workdir / "samples.cot.jsonl"
  moments = [
    ("while sampling", lambda: samples.exists() and samples.stat().st_size > 0),
    ("during the first checkpoint save", lambda: checkpoint_being_saved(checkpoints)),
    ("after the checkpoint of step 4", lambda: (checkpoints / "4").exists()),
    (
      "between checkpoints",
      lambda: (workdir / "metrics.jsonl").exists() and len((workdir / "metrics.jsonl").read_text().splitlines()) >= 5,
    ),
  ]
  killed_at = kill_at_moments([*base, f"--workdir={workdir}"], moments, env=env, cwd=root)
  assert killed_at, "every run finished before it could be killed"
  subprocess.run([*base, f"--workdir={workdir}"], check=True, env=env, capture_output=True, timeout=600, cwd=root)
  for name in ("samples.cot.jsonl", "samples.direct.jsonl", "pairs.jsonl", "heldout_pairs.jsonl"):
    assert (workdir / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), name
  full = load_file(str(tmp_path / "full/export/model.safetensors"))
  resumed = load_file(str(workdir / "export/model.safetensors"))
  for name in full:
    np.testing.assert_array_equal(resumed[name], full[name], err_msg=name)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "eval/loss" not in r] == list(range(1, 9))  # each training step once
  # The held-out curve holds the steps the killed run evaluated as well as the resumed run's.
  curves = [json.loads((d / "refine_summary.json").read_text())["heldout_curve"] for d in (tmp_path / "full", workdir)]
  assert sorted(curves[1], key=int) == ["0", "2", "4", "6", "8"]
  for step, values in curves[0].items():
    assert curves[1][step] == pytest.approx(values, rel=1e-6), step


@pytest.mark.long  # 6-9 minutes; the tiny DPO tests and QLoRA on SmolLM2 learning are quick
def test_smollm2_learns_to_prefer_its_own_correct_reasoning(smollm2_dir, optimized_programs, tmp_path):
  """Pairs from SmolLM2's own CommonsenseQA samples (a correct CoT answer over a direct answer):
  a short DPO run lifts held-out reward accuracy above 0.5 and the held-out margin grows."""
  config = load_config("refine")
  config.update(
    model=str(smollm2_dir),
    task="csqa",
    data_dir=str(SHARED_DATA / "benchmarks"),
    limit=40,
    num_cot_samples=2,
    max_new_tokens=48,
    max_new_tokens_direct=8,
    max_length=160,
    batch_size=4,
    # Held-out reward accuracy 0.5 after steps 1-3, 0.75 from step 4 (3 of the 4 held-out pairs),
    # margin 0.077 at step 6 (8 steps: 0.75, 0.109; at 2e-5 it falls back to 0.5 after step 4).
    num_steps=6,
    save_every=6,
    eval_every=0,
    heldout_fraction=0.3,
  )
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.optimizer.update(learning_rate=1e-5, warmup_steps=0)
  summary = refine.run(config, tmp_path, progress=False)
  before, after = summary["heldout_before"], summary["heldout_after"]
  assert (
    summary["pairs"]["heldout_pairs"] >= 4 and summary["pairs"]["pairs_student_chosen"] == summary["pairs"]["pairs"]
  )
  assert after["eval/rewards/accuracies"] > 0.5
  assert after["eval/rewards/margins"] > before["eval/rewards/margins"] == 0.0
