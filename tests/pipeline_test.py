"""`srit-jax pipeline` on a tiny model: every artifact, skipped phases on rerun, and a changed
phase rerun with the phases after it."""

import json
import time

import jax
import numpy as np
import pytest
from conftest import load_tiny_pipeline_config

from srit_jax.conversion import loading
from srit_jax.data import fingerprint
from srit_jax.generation import sampler
from srit_jax.phases import evaluate as evaluation
from srit_jax.phases import phase_time, pipeline, status
from srit_jax.phases.phase import TRAINING_STATE, Phase
from srit_jax.tasks import registry


def _tiny_pipeline_config(model_dir):
  config = load_tiny_pipeline_config()
  config.student = str(model_dir)
  return config


@pytest.mark.slow
def test_pipeline_writes_every_artifact_and_skips_what_is_done(
  tiny_student, tmp_path, tmp_path_factory, capsys, monkeypatch
):
  config = _tiny_pipeline_config(tiny_student)
  config.demos.heldout_questions, config.sft.eval_every = 6, 1  # SFT's held-out loss on 6 untaught questions
  # While a stage is evaluated, its model is the only one resident: not the SFT phase's trained
  # parameters, nor the model of the stage evaluated before it. The stages after the first run
  # the programs it traced (no prompt is prefilled in a trace of their own).
  evaluate, prefilled = evaluation.evaluate, sampler._prefilled
  resident, traces, traces_per_stage = [], [], []

  def prefilled_and_count(*args, **kwargs):
    traces.append(1)
    return prefilled(*args, **kwargs)

  def evaluate_and_count(model, *args, **kwargs):
    model_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(model.params))
    resident.append(sum(array.nbytes for array in jax.live_arrays()) / model_bytes)
    traced_before = len(traces)
    result = evaluate(model, *args, **kwargs)
    traces_per_stage.append(len(traces) - traced_before)
    return result

  monkeypatch.setattr(evaluation, "evaluate", evaluate_and_count)
  monkeypatch.setattr(sampler, "_prefilled", prefilled_and_count)
  started = time.time()
  results = pipeline.run(config, tmp_path, progress=False)
  run_seconds = time.time() - started
  assert len(resident) == 3 and max(resident) < 1.5, resident  # models resident, in units of one
  assert traces_per_stage[0] > 0 and traces_per_stage[1:] == [0, 0], traces_per_stage
  first = capsys.readouterr().out
  sft_metrics = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
  assert [line["step"] for line in sft_metrics if "eval_loss" in line] == [1, 2, 3]
  held_out = {json.loads(line)["id"] for line in (tmp_path / "demos" / "heldout.jsonl").read_text().splitlines()}
  taught = {json.loads(line)["id"] for line in (tmp_path / "demos" / "demos.jsonl").read_text().splitlines()}
  assert held_out and not held_out & taught

  for name in ("results.json", "results.md", "accuracy.png", "training_curves.png"):
    assert (tmp_path / name).exists(), name
  for name in ("accuracy.png", "training_curves.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved == json.loads(json.dumps(results))
  assert saved["domains"] == {"arith": "in-domain", "arith_hard": "out-domain"}
  assert saved["teacher"] == "reference-solutions" and saved["family"] == "out-family"
  assert set(saved["stages"]) == {"untuned", "sft", "srit"}
  steps = config.sft.num_steps
  assert saved["sft"] == {"steps_run": steps, "selected_step": steps}  # the SFT phase's own summary
  # Each phase's own peak resident memory (Linux), also in its completion marker.
  peaks = saved["peak_rss_bytes"]
  assert set(peaks) == {"demos", "sft", "refine", "eval/untuned", "eval/sft", "eval/srit"}
  assert all(isinstance(p, int) and 10**7 < p < 64 * 2**30 for p in peaks.values())
  assert json.loads((tmp_path / "sft" / "DONE.json").read_text())["peak_rss_bytes"] == peaks["sft"]
  # And the wall time each phase took, in one attempt each, within the run's own.
  took = saved["seconds"]
  assert set(took) == set(peaks) and all(t > 0 for t in took.values()) and sum(took.values()) <= run_seconds
  assert json.loads((tmp_path / "refine" / "DONE.json").read_text())["attempts"] == 1
  assert f"wall time {phase_time.duration(sum(took.values()))} over 6 phases" in first
  for stage in saved["stages"].values():
    for task in ("arith", "arith_hard"):
      assert stage[task]["cot"]["n"] == 4 and "direct" in stage[task]
  # Paired statistics of every two stages, on the same questions, from the per-question files.
  for task in ("arith", "arith_hard"):
    per_question = {
      stage: {
        json.loads(line)["id"]: json.loads(line)["correct"]
        for line in (tmp_path / "eval" / stage / f"{task}.cot.jsonl").read_text().splitlines()
      }
      for stage in ("untuned", "sft", "srit")
    }
    comparison = saved["paired"][task]["srit_vs_sft"]
    assert comparison["n"] == 4
    assert comparison["only_first_correct"] == sum(
      per_question["sft"][i] and not per_question["srit"][i] for i in per_question["sft"]
    )
    assert comparison["only_second_correct"] == sum(
      per_question["srit"][i] and not per_question["sft"][i] for i in per_question["sft"]
    )
    assert 0 <= comparison["mcnemar_p"] <= 1 and comparison["resolves_5_points"] is False
    assert set(saved["paired"][task]) == {"srit_vs_sft", "sft_vs_untuned", "srit_vs_untuned"}
  table = (tmp_path / "results.md").read_text()
  assert "SRIT − SFT, paired on the same questions" in table and "McNemar p" in table
  assert "n is too small to resolve a 5-point difference" in table
  assert "| arith | in-domain | 4 |" in table and "| arith_hard | out-domain | 4 |" in table and table in first
  cells = [saved["stages"][s]["arith"]["cot"]["arithmetic"] for s in ("untuned", "sft", "srit")]
  cells = [f"{100 * c['slip_share']:.1f} / {100 * c['accuracy_without_slip']:.1f}" for c in cells]
  assert "| arith | in-domain | " + " | ".join(cells) + " |" in table and "wrong calculation step" in table
  for phase in ("demos", "sft", "refine", "eval/untuned", "eval/sft", "eval/srit"):
    assert (tmp_path / phase / "DONE.json").exists(), phase
  assert (tmp_path / "sft" / "export" / "model.safetensors").exists()
  assert (tmp_path / "refine" / "export" / "model.safetensors").exists()

  # A rerun does nothing again.
  before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and "png" not in p.suffix}
  pipeline.run(config, tmp_path, progress=False)
  second = capsys.readouterr().out
  for phase in ("demos", "sft", "refine", "eval/untuned", "eval/sft", "eval/srit"):
    assert f"[{phase}] done already, skipped" in second
  changed = [p for p, t in before.items() if p.exists() and p.stat().st_mtime_ns != t]
  assert sorted(p.name for p in changed) == ["results.json", "results.md", "run_config.json"]  # the run's own
  assert json.loads((tmp_path / pipeline.RUN_CONFIG).read_text()) == json.loads(config.to_json())

  # Another run of the same settings that may reuse this one's phases runs none of its own.
  # (The student lies in this workdir, which the fingerprints name "$WORKDIR/tiny_student": the
  # other run's own student lies in its own.)
  assert tiny_student.parent == tmp_path
  second_workdir = tmp_path_factory.mktemp("second")
  (second_workdir / tiny_student.name).symlink_to(tiny_student, target_is_directory=True)
  second = _tiny_pipeline_config(second_workdir / tiny_student.name)
  second.demos.heldout_questions, second.sft.eval_every = config.demos.heldout_questions, config.sft.eval_every
  second.reuse_phases_from = str(tmp_path)
  reused = pipeline.run(second, second_workdir, progress=False)
  linked = capsys.readouterr().out
  assert f"phases done with the same inputs are taken over from 1 other run ({tmp_path})" in linked
  for phase in ("demos", "sft", "refine", "eval/untuned", "eval/sft", "eval/srit"):
    assert f"[{phase}] done with the same inputs in {tmp_path / phase}: linked from there, not run" in linked
    files = [f.relative_to(tmp_path / phase) for f in (tmp_path / phase).rglob("*") if f.is_file()]
    state = [f for f in files if f.parts[0] in TRAINING_STATE]  # only resumes the phase: not taken
    assert bool(state) == (phase in ("sft", "refine")) and not any((second_workdir / phase / f).exists() for f in state)
    shared = [f for f in files if f not in state and f.name != "DONE.json"]
    assert all((second_workdir / phase / f).samefile(tmp_path / phase / f) for f in shared)
  assert reused["stages"] == saved["stages"] and reused["paired"] == saved["paired"]
  assert reused["taken_over_from"] == {name: str(tmp_path / name) for name in reused["seconds"]}
  assert reused["seconds"] == saved["seconds"]  # the time each phase took where it was made
  taken_over = "taken over from other runs, not run here: demos, sft, refine, eval/untuned, eval/sft, eval/srit"
  assert taken_over in linked and "wall time" not in linked
  # One with another DPO setting runs its refine round, on the samples and reference log-probs
  # made here from the same model and settings (a sweep of DPO settings samples once).
  third_workdir = tmp_path_factory.mktemp("third")
  (third_workdir / tiny_student.name).symlink_to(tiny_student, target_is_directory=True)
  third = _tiny_pipeline_config(third_workdir / tiny_student.name)
  third.demos.heldout_questions, third.sft.eval_every = config.demos.heldout_questions, config.sft.eval_every
  third.reuse_phases_from, third.refine.beta = f"{tmp_path},{second_workdir}", 0.2
  pipeline.run(third, third_workdir, progress=False)
  out = capsys.readouterr().out
  assert "[refine] self-refinement round 1" in out and "[eval/srit] done with the same inputs" not in out
  for name in ("samples.cot.jsonl", "samples.direct.jsonl", "reference_logps.npz"):
    assert f"{third_workdir / 'refine' / name}: taken over from {tmp_path / 'refine' / name}" in out
    assert (third_workdir / "refine" / name).samefile(tmp_path / "refine" / name)

  # A changed DPO setting reruns refine and the evaluation of its student, nothing else; the
  # student's samples, made by the same model with the same settings, are kept as they are.
  samples = {name: (tmp_path / "refine" / name).read_bytes() for name in ("samples.cot.jsonl", "samples.direct.jsonl")}
  sample_times = {name: (tmp_path / "refine" / name).stat().st_mtime_ns for name in samples}
  config.refine.beta = 0.2
  pipeline.run(config, tmp_path, progress=False)
  third = capsys.readouterr().out
  assert "[refine] its config or an earlier phase changed since it ran: running it again (keeping" in third
  assert "[eval/srit] its config or an earlier phase changed" in third
  for phase in ("demos", "sft", "eval/untuned", "eval/sft"):
    assert f"[{phase}] done already, skipped" in third
  for name, content in samples.items():
    assert (tmp_path / "refine" / name).stat().st_mtime_ns == sample_times[name], name
    assert (tmp_path / "refine" / name).read_bytes() == content
  # A changed sampling setting remakes the samples it touches.
  config.refine.temperature = 0.9
  pipeline.run(config, tmp_path, progress=False)
  capsys.readouterr()
  assert (tmp_path / "refine" / "samples.cot.jsonl").read_bytes() != samples["samples.cot.jsonl"]

  # A second round of refinement from the refined student, its reference still the SFT
  # student: round 1 is kept, round 2 starts where the policy already differs from it.
  config.refine_iterations = 2
  results = pipeline.run(config, tmp_path, progress=False)
  fourth = capsys.readouterr().out
  assert "[refine] done already, skipped" in fourth and "[refine_2] self-refinement" in fourth
  second_round = json.loads((tmp_path / "refine_2" / "DONE.json").read_text())["summary"]
  assert second_round["heldout_before"]["eval/rewards/margins"] != 0.0
  sft_identity = loading.load_model(tmp_path / "sft" / "export").identity
  assert second_round["reference"] == {"model": str(tmp_path / "sft" / "export"), "identity": sft_identity}
  first_samples = (tmp_path / "refine" / "samples.cot.jsonl").read_text()
  assert (tmp_path / "refine_2" / "samples.cot.jsonl").read_text() != first_samples  # new samples
  assert results["stages"]["srit"] == json.loads((tmp_path / "eval/srit/summary.json").read_text())

  # Sampled answers beside the greedy ones rerun the evaluations alone: pass@k and the majority
  # vote per stage, the stages' votes paired as their greedy answers are.
  config.eval.sampled_answers = 2
  results = pipeline.run(config, tmp_path, progress=False)
  fifth = capsys.readouterr().out
  assert "[refine_2] done already, skipped" in fifth and "[eval/sft] its config or an earlier phase changed" in fifth
  for stage in ("untuned", "sft", "srit"):
    assert results["stages"][stage]["arith"]["cot"]["sampled"]["samples"] == 2
  votes = {
    stage: evaluation.per_question_outcomes(tmp_path / "eval" / stage / "arith.cot.sampled.jsonl")
    for stage in ("sft", "srit")
  }
  majority = results["paired_majority"]["arith"]["srit_vs_sft"]
  assert majority["only_first_correct"] == sum(votes["sft"][i] and not votes["srit"][i] for i in votes["sft"])
  assert majority["second_correct"] == sum(votes["srit"].values()) and majority["n"] == 4
  # pass@1 and pass@2 paired from the same files: each question's share of right answers, and any right.
  samples = {
    stage: evaluation.per_question_samples(tmp_path / "eval" / stage / "arith.cot.sampled.jsonl")
    for stage in ("sft", "srit")
  }
  paired = results["paired_sampled"]["arith"]["srit_vs_sft"]
  shares = {stage: [sum(c) / len(c) for c in samples[stage].values()] for stage in samples}
  assert paired["pass@1"]["difference"] == pytest.approx(np.mean(shares["srit"]) - np.mean(shares["sft"]))
  assert paired["pass@k"]["k"] == 2 and paired["pass@k"]["second_correct"] == sum(map(any, samples["srit"].values()))
  stage_entry = results["stages"]["srit"]["arith"]["cot"]["sampled"]["pass_at"]
  assert paired["pass@1"]["second_mean"] == pytest.approx(stage_entry["1"]["value"])
  assert paired["pass@k"]["second_correct"] / 4 == pytest.approx(stage_entry["2"]["value"])
  table = (tmp_path / "results.md").read_text()
  assert "2 CoT answers sampled a question (temperature 0.7, top-p 1): pass@1 / pass@2 / majority-vote" in table
  assert "majority-vote accuracy points of the sampled answers" in table
  assert "| task | domain | n | pass@1 | pass@2 | only SFT reaches | only SRIT reaches | McNemar p |" in table


@pytest.mark.slow
def test_iterated_rounds_against_their_own_start_with_the_control_and_every_round_evaluated(tiny_student, tmp_path):
  config = _tiny_pipeline_config(tiny_student)
  config.update(refine_iterations=2, refine_reference="previous", control=True, eval_rounds=True, eval_untuned=False)
  # The preference's step is chosen on held-out pairs; the control exports its last step.
  config.refine.select_checkpoint = "best_heldout"
  config.refine.selection_loss_type = "hinge"  # by another loss: the control's is its own (it reads no reference)
  config.control_select_checkpoint = "last"
  results = pipeline.run(config, tmp_path, progress=False)
  # Each round's reference is its own start: round 2's is round 1's student.
  for name, start in (("refine", "sft"), ("refine_2", "refine"), ("refine_control_2", "refine_control")):
    summary = json.loads((tmp_path / name / "DONE.json").read_text())["summary"]
    export = tmp_path / start / "export"
    assert summary["reference"] == {"model": str(export), "identity": loading.load_model(export).identity}, name
  # The control's first round trains on the refined chain's own samples and pairs, with the NLL loss alone.
  for file in ("samples.cot.jsonl", "samples.direct.jsonl", "pairs.jsonl"):
    assert (tmp_path / "refine_control" / file).read_bytes() == (tmp_path / "refine" / file).read_bytes(), file
  control = json.loads((tmp_path / "refine_control" / "DONE.json").read_text())["summary"]
  refined = json.loads((tmp_path / "refine" / "DONE.json").read_text())["summary"]
  assert control["num_steps"] == refined["num_steps"]
  assert refined["selected"]["by"] == "eval/selection_loss" and "selected" not in control
  assert not (tmp_path / "refine_control" / "best_checkpoint.json").exists()
  # Its rows hold the chosen answers alone and no reference scores its training pairs.
  assert control["layout"]["chosen_only"] and not refined["layout"]["chosen_only"]
  assert control["layout"]["rows_per_step"] <= refined["layout"]["rows_per_step"]
  assert control["last_step"]["tokens"] < refined["last_step"]["tokens"]  # the same pairs' chosen answers
  assert not (tmp_path / "refine_control" / "reference_logps.npz").exists()
  assert (tmp_path / "refine" / "reference_logps.npz").exists()
  assert "rewards/accuracies" not in control["last_step"] and "eval/rewards/accuracies" in control["heldout_after"]
  assert control["last_step"]["loss"] == pytest.approx(control["last_step"]["nll/chosen"], rel=1e-5)
  assert set(results["stages"]) == {"sft", "srit", "control", "srit_round_1"}  # the untuned student left out
  assert not (tmp_path / "eval" / "untuned").exists() and "sft_vs_untuned" not in results["paired"]["arith"]
  assert set(results["stages"]["srit_round_1"]) == {"arith"}  # rounds are evaluated in-domain
  assert set(results["paired"]["arith"]) >= {"control_vs_sft", "srit_vs_control", "srit_round_1_vs_sft"}
  assert "srit_round_1_vs_sft" not in results["paired"]["arith_hard"]
  assert [r["phase"] for r in results["rounds"]] == ["refine", "refine_2"]
  assert [r["phase"] for r in results["control_rounds"]] == ["refine_control", "refine_control_2"]
  assert "control" in (tmp_path / "results.md").read_text()
  # `srit-jax status` knows the phases the run made, in its order, and finds each done.
  made = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.glob("**/DONE.json"))
  assert sorted(pipeline.phase_names(config)) == made
  phases = status.run(tmp_path)["phases"]  # from the config the run recorded
  assert [(p.name, p.state) for p in phases] == [(name, status.DONE) for name in pipeline.phase_names(config)]

  # A control rerun over samples kept from a run with other settings (a variant linked from
  # another seed's run) takes the refined chain's samples again instead of drawing its own.
  kept = tmp_path / "refine_control" / "samples.cot.jsonl"
  kept.unlink()
  kept.write_text((tmp_path / "refine" / "samples.cot.jsonl").read_text().replace('"seed": ', '"seed": 1'))
  (tmp_path / "refine_control" / "DONE.json").unlink()
  pipeline.run(config, tmp_path, progress=False)
  assert kept.samefile(tmp_path / "refine" / "samples.cot.jsonl")


def test_a_setting_at_its_neutral_value_leaves_the_fingerprint_of_runs_made_before_it(tmp_path):
  config = _tiny_pipeline_config("unused")
  settings = fingerprint.fingerprinted(config.refine.to_dict())
  assert "sampling_seed" not in settings and settings["seed"] == config.refine.seed
  neutral = {k: v for k, v in fingerprint.NEUTRAL_SETTINGS[""].items() if k in config.refine}
  assert neutral and {**settings, **neutral} == config.refine.to_dict()
  # The phase made before the setting existed (its settings without it) is the same phase.
  before = Phase(tmp_path, "refine", settings, "upstream").fingerprint
  assert Phase(tmp_path, "refine", config.refine.to_dict(), "upstream").fingerprint == before
  config.refine.early_stopping_patience = 4  # another stopping rule is another phase
  assert Phase(tmp_path, "refine", config.refine.to_dict(), "upstream").fingerprint != before
  config.refine.early_stopping_patience = 0
  config.refine.sampling_seed = 1  # another draw is another phase
  assert fingerprint.fingerprinted(config.refine.to_dict())["sampling_seed"] == 1
  assert Phase(tmp_path, "refine", config.refine.to_dict(), "upstream").fingerprint != before


def test_settings_neutral_in_one_block_stay_in_the_fingerprints_of_the_others(tmp_path):
  config = _tiny_pipeline_config("unused")
  # SFT gained held-out selection after refine had it: neutral in SFT's fingerprint alone.
  sft_before = {k: v for k, v in config.sft.to_dict().items() if k not in fingerprint.NEUTRAL_SETTINGS["sft"]}
  assert len(sft_before) == len(config.sft.to_dict()) - len(fingerprint.NEUTRAL_SETTINGS["sft"])
  assert fingerprint.fingerprinted(config.sft.to_dict(), "sft") == fingerprint.fingerprinted(sft_before)
  assert fingerprint.fingerprinted(config.refine.to_dict(), "refine")["select_checkpoint"] == "last"
  config.sft.select_checkpoint = "best_heldout"  # another choice of step is another phase
  assert fingerprint.fingerprinted(config.sft.to_dict(), "sft")["select_checkpoint"] == "best_heldout"
  # Evaluation gained sampled answers (their temperature 0.7, unlike refine's sampling seed's block).
  sampled = ("sampled_answers", "temperature", "top_p", "sampling_seed", "paired_with", "num_shots")
  eval_before = {k: v for k, v in config.eval.to_dict().items() if k not in sampled}
  assert fingerprint.fingerprinted(config.eval.to_dict(), "eval") == fingerprint.fingerprinted(eval_before)
  assert fingerprint.fingerprinted(config.refine.to_dict(), "refine")["temperature"] == config.refine.temperature
  config.eval.sampled_answers = 4
  assert fingerprint.fingerprinted(config.eval.to_dict(), "eval")["sampled_answers"] == 4


def test_the_results_say_which_step_sft_kept_where_it_is_not_its_last():
  from srit_jax.phases import report

  results = {
    "student": "s", "student_family": "f", "teacher": "t", "teacher_family": "g", "family": "out-family",
    "train_task": "arith", "domains": {"arith": "in-domain"}, "stages": {"sft": {}},
  }  # fmt: skip
  line = "SFT kept step 60 of the 110 it ran (its lowest held-out loss)."
  assert line in report.results_markdown(results | {"sft": {"steps_run": 110, "selected_step": 60}})
  assert "SFT kept" not in report.results_markdown(results | {"sft": {"steps_run": 110, "selected_step": 110}})
  assert "SFT kept" not in report.results_markdown(results)  # a run made before SFT recorded its steps


def test_a_control_stopped_early_must_keep_its_best_step():
  from srit_jax.configs import checks

  config = _tiny_pipeline_config("unused")
  config.update(control=True, control_select_checkpoint="last")
  config.refine.update(select_checkpoint="best_heldout", eval_every=1, early_stopping_patience=2)
  assert any(p.startswith("control_select_checkpoint = 'last' with") for p in checks.problems(config, "pipeline"))
  config.control_select_checkpoint = ""
  assert not any("early_stopping" in p for p in checks.problems(config, "pipeline"))


def test_the_in_domain_tasks_follow_the_refine_task():
  config = _tiny_pipeline_config("unused")
  config.update(train_task="arith", in_domain_tasks="", out_domain_tasks="arith,arith_hard")
  assert registry.evaluation_domains(config) == {"arith": "in-domain", "arith_hard": "out-domain"}
  config.refine_task = "wordmath"
  assert registry.evaluation_domains(config) == {
    "wordmath": "in-domain", "arith": "out-domain", "arith_hard": "out-domain"
  }  # fmt: skip
  config.in_domain_tasks = "arith,wordmath"  # named: as named
  assert registry.evaluation_domains(config) == {
    "arith": "in-domain",
    "wordmath": "in-domain",
    "arith_hard": "out-domain",
  }


def test_the_paper_setting_on_whole_test_sets_answers_every_question_in_four_stages():
  import math

  from srit_jax import configs
  from srit_jax.configs import checks
  from srit_jax.planning import compiled_figures, program_plan, run_time, topology

  config = configs.load("csqa_palm", "full")
  checks.check(config, "pipeline")
  domains = {"csqa": "in-domain", "obqa": "out-domain", "arc_challenge": "out-domain"}
  assert registry.evaluation_domains(config) == domains
  devices, _ = topology.tpu_devices("v5e-8")
  one = compiled_figures.Cost(1e12, 1e9)
  plans = [
    program_plan.ProgramPlan("refine", "sampler (64 rows)", "splash", cost=one, per_call=64),
    program_plan.ProgramPlan("eval", "sampler (64 rows)", "splash", cost=one, per_call=64),
  ]
  calls = {(e.phase, e.program): e.calls for e in run_time.run_estimate(config, plans, devices)}
  # Untuned, SFT, SRIT and the control on CSQA dev, OBQA test and ARC-Challenge test, whole.
  assert calls[("eval", "sampler")] == 4 * sum(math.ceil(n / 64) for n in (1221, 500, 1172))
  # 300 demonstrated questions, 4 CoT answers and 1 direct answer each; the control reuses them.
  assert calls[("refine", "sampler")] == math.ceil(1200 / 64) + math.ceil(300 / 64)
  config.eval.sampled_answers = 8  # and 8 sampled CoT answers a question
  estimate = {(e.phase, e.program): e for e in run_time.run_estimate(config, plans, devices)}
  assert estimate[("eval", "sampler")].calls == 4 * sum(
    math.ceil(n / 64) + math.ceil(8 * n / 64) for n in (1221, 500, 1172)
  )
  assert "8 sampled CoT answers each" in estimate[("eval", "sampler")].assumption


@pytest.mark.slow
def test_cross_self_refinement_samples_the_other_tasks_training_questions(tiny_student, tmp_path):
  config = _tiny_pipeline_config(tiny_student)
  config.update(refine_task="wordmath", in_domain_tasks="", out_domain_tasks="arith")
  # The random tiny student solves none of them and no teacher answered them: no pair, said so.
  with pytest.raises(ValueError, match="no preference pair to train on"):
    pipeline.run(config, tmp_path, progress=False)
  samples = [json.loads(line) for line in (tmp_path / "refine" / "samples.cot.jsonl").read_text().splitlines()]
  assert samples and all(s["id"].startswith("wordmath/") for s in samples)
  demos = [json.loads(line) for line in (tmp_path / "demos" / "demos.jsonl").read_text().splitlines()]
  assert {d["task"] for d in demos} == {"arith"}  # taught on one task, refined on the other
