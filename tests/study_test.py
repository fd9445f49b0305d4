"""The self-refinement study's report (studies/self_refinement.py): tables from finished
variants, and rows reported before kept when their run folders are gone."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]


def _paired(first_correct: int, second_correct: int, n: int = 100) -> dict:
  return {
    "n": n,
    "first_correct": first_correct,
    "second_correct": second_correct,
    "difference": (second_correct - first_correct) / n,
    "ci95": [-0.05, 0.05],
    "only_first_correct": 3,
    "only_second_correct": 3 + second_correct - first_correct,
    "mcnemar_p": 0.5,
  }


def _finished(root: pathlib.Path, variant: str, srit_correct: int) -> None:
  workdir = root / variant
  workdir.mkdir(parents=True)
  results = {
    "domains": {"wordmath": "in-domain", "wordmath_ood": "out-domain"},
    "stages": {stage: {"wordmath": {"cot": {"accuracy": 0.3}}} for stage in ("sft", "srit")},
    "paired": {task: {"srit_vs_sft": _paired(30, srit_correct)} for task in ("wordmath", "wordmath_ood")},
    "pairs": {"pairs": 12},
    "rounds": [{"pairs": 12, "num_steps": 20, "heldout_curve": {"10": {"eval/rewards/accuracies": 0.75}}}],
  }
  (workdir / "results.json").write_text(json.dumps(results))
  (workdir / "STUDY_DONE").write_text(json.dumps({"seconds": 60.0, "overrides": []}))


def _report(root: pathlib.Path, doc: pathlib.Path) -> tuple[str, dict]:
  result = subprocess.run(
    [sys.executable, str(ROOT / "studies" / "self_refinement.py"), f"--root={root}", f"--doc={doc}", "--report_only"],
    capture_output=True,
    text=True,
    env=dict(os.environ, MPLBACKEND="Agg"),
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return doc.read_text(), json.loads(doc.with_suffix(".json").read_text())


def test_the_report_keeps_rows_whose_runs_are_gone_until_they_finish_again(tmp_path):
  doc = tmp_path / "study.md"
  doc.write_text("# Study\n\nbefore\n<!-- study table -->\nold table\n<!-- end study table -->\nafter\n")
  first_root = tmp_path / "first"
  _finished(first_root, "base", srit_correct=32)
  _finished(first_root, "rpo", srit_correct=40)
  # The SRIT student's answers of base, evaluated before evaluations recorded their arithmetic.
  answers = [{"generation": "2 + 2 = 4. The answer is 4.", "correct": True}]
  answers += [{"generation": "2 + 2 = 5. The answer is 5.", "correct": False}]
  (first_root / "base" / "eval" / "srit").mkdir(parents=True)
  (first_root / "base" / "eval" / "srit" / "wordmath.cot.jsonl").write_text(
    "".join(json.dumps(a) + "\n" for a in answers)
  )
  text, summary = _report(first_root, doc)
  assert "| base | wordmath (in-domain) | — | 50.0 (9.5–90.5) / 100.0 | — |" in text
  assert summary["base"]["arithmetic"]["srit"]["wordmath"]["answers_with_slip"] == 1
  assert "old table" not in text and text.startswith("# Study\n\nbefore\n") and text.endswith("after\n")
  assert "| rpo | SRIT − SFT | wordmath (in-domain) | 100 | 30.0 | 40.0 | +10.0 " in text
  assert "| base | SRIT − SFT | wordmath_ood (out-domain) | 100 | 30.0 | 32.0 | +2.0 " in text
  assert summary["rpo"]["domains"] == {"wordmath": "in-domain", "wordmath_ood": "out-domain"}

  # The study resumed elsewhere: only base has finished there; rpo's rows stay as reported.
  second_root = tmp_path / "second"
  _finished(second_root, "base", srit_correct=35)
  text, summary = _report(second_root, doc)
  assert "| base | SRIT − SFT | wordmath (in-domain) | 100 | 30.0 | 35.0 | +5.0 " in text
  assert "| rpo | SRIT − SFT | wordmath (in-domain) | 100 | 30.0 | 40.0 | +10.0 " in text
  assert summary["rpo"]["seconds"] == 60.0
  assert summary["base"]["paired"]["wordmath"]["srit_vs_sft"]["second_correct"] == 35

  # rpo finishes again there: its new rows replace the kept ones.
  _finished(second_root, "rpo", srit_correct=28)
  text, _ = _report(second_root, doc)
  assert "| rpo | SRIT − SFT | wordmath (in-domain) | 100 | 30.0 | 28.0 | -2.0 " in text
  assert "+10.0" not in text


def _study_module():
  """The study's script as a module, loaded once a process: loading it again defines its absl
  flags again, which absl allows only while the old module object is alive (it tells a reload
  from a second definition by the module's id, which a new module may reuse)."""
  import importlib.util

  if "self_refinement_study" in sys.modules:
    return sys.modules["self_refinement_study"]
  sys.path.insert(0, str(ROOT / "studies"))  # as when run as a script: its own modules beside it
  spec = importlib.util.spec_from_file_location("self_refinement_study", ROOT / "studies" / "self_refinement.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # its dataclasses look their module up
  spec.loader.exec_module(module)
  return module


def _study_part(name: str):
  """One of the modules the study's script imports from beside it (study_variants, study_report, study_verdicts)."""
  import importlib

  _study_module()
  return importlib.import_module(name)


def test_on_a_fresh_machine_variants_share_the_phases_the_first_one_made(tmp_path, monkeypatch):
  study = _study_module()
  # Neither the base nor rpo (the variant rpo_3_rounds changes one thing of) has run here, and
  # neither runs for it. The phases every variant shares (and a control two variants make
  # alike) the pipeline takes from whichever variant here made them, by their fingerprints
  # (phase.other_runs reads the root).
  (tmp_path / "slip_corrected_nll_seed_1" / "sft").mkdir(parents=True)
  (tmp_path / "slip_corrected_nll_seed_1" / "sft" / "DONE.json").write_text("{}")
  commands = []

  def pipeline(command, **kwargs):
    commands.append(command)
    pathlib.Path(command[-1].removeprefix("--workdir=")).mkdir()

  monkeypatch.setattr(study.subprocess, "run", pipeline)
  study.run_variant(tmp_path, "rpo_3_rounds")
  assert len(commands) == 1
  assert sorted(p.name for p in tmp_path.iterdir()) == ["rpo_3_rounds", "slip_corrected_nll_seed_1"]
  assert commands[0][-2:] == [f"--config.reuse_phases_from={tmp_path}", f"--workdir={tmp_path / 'rpo_3_rounds'}"]


def test_overrides_given_to_the_study_follow_each_variants_own_and_are_recorded(tmp_path, monkeypatch):
  study = _study_module()
  commands, environments = [], []

  def pipeline(command, **kwargs):
    commands.append(command)
    environments.append(kwargs["env"])
    workdir = pathlib.Path(command[-1].removeprefix("--workdir="))
    workdir.mkdir(exist_ok=True)
    (workdir / "results.json").write_text("{}")

  monkeypatch.setattr(study.subprocess, "run", pipeline)
  study.run_variant(tmp_path, "correct_vs_incorrect", ("eval.batch_size=256",))
  assert commands[0][-5:-2] == [
    "--config.refine.strategy=correct_vs_incorrect",
    "--config.eval_untuned=False",  # the base's to evaluate
    "--config.eval.batch_size=256",
  ]
  # The pipeline runs the study's own checkout, not whatever `srit-jax` is first on the PATH.
  assert commands[0][3:6] == [sys.executable, "-m", "srit_jax.cli"]
  assert environments[0]["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
  marker = json.loads((tmp_path / "correct_vs_incorrect" / "STUDY_DONE").read_text())
  assert marker["overrides"] == commands[0][-5:-2]  # where the variant may take phases from is no setting
  study.run_variant(tmp_path, "base")
  assert not any("eval_untuned" in part for part in commands[1])

  study.run_variant(tmp_path, "correct_vs_incorrect", ("eval.batch_size=256",))  # finished with the same
  assert len(commands) == 2
  study.run_variant(tmp_path, "correct_vs_incorrect")  # other settings: it runs again
  assert len(commands) == 3 and commands[2][-4] == "--config.refine.strategy=correct_vs_incorrect"


def test_a_finished_variant_keeps_its_exports_and_loses_its_checkpoints(tmp_path, monkeypatch):
  study = _study_module()

  def pipeline(command, **kwargs):
    workdir = pathlib.Path(command[-1].removeprefix("--workdir="))
    for phase, done in (("sft", True), ("refine", True), ("refine_control", False)):
      for folder in ("checkpoints/20", "best_checkpoint/20", "export"):
        (workdir / phase / folder).mkdir(parents=True, exist_ok=True)
        (workdir / phase / folder / "model.safetensors").write_text("weights")
      if done:
        (workdir / phase / "DONE.json").write_text("{}")
    (workdir / "results.json").write_text("{}")

  monkeypatch.setattr(study.subprocess, "run", pipeline)
  study.run_variant(tmp_path, "lora", keep_checkpoints=True)
  assert (tmp_path / "lora" / "sft" / "checkpoints" / "20" / "model.safetensors").exists()
  study.run_variant(tmp_path, "correct_vs_incorrect")
  workdir = tmp_path / "correct_vs_incorrect"
  for phase in ("sft", "refine"):
    assert sorted(p.name for p in (workdir / phase).iterdir()) == ["DONE.json", "export"]
  # A phase that did not finish keeps what it needs to resume.
  assert (workdir / "refine_control" / "checkpoints" / "20" / "model.safetensors").exists()
  study.run_variant(tmp_path, "lora")  # finished before with checkpoints kept: removed now
  assert not (tmp_path / "lora" / "sft" / "checkpoints").exists()
  assert (tmp_path / "lora" / "sft" / "export" / "model.safetensors").exists()


def test_the_gpu_script_runs_every_variant_of_the_study():
  script = (ROOT / "studies" / "gpu_study.sh").read_text()
  values = [line.split("=", 1)[1] for line in script.splitlines() if line.startswith(("ALL=", "ALL+="))]
  names = [name for value in values for name in value.split(",") if name]
  assert names[0] == "base" and len(names) == len(set(names))
  assert set(names) == set(_study_module().VARIANTS)


def test_every_variant_is_a_pipeline_command_line_whose_settings_pass_the_checks(tmp_path):
  """A misspelt field or value in a queued variant fails here, not hours into the study."""
  from srit_jax import cli

  study = _study_module()
  assert study.queue_problems(tmp_path, list(study.VARIANTS)) == []

  def problems(*overrides):
    return cli.command_line_problems(study.command_line("pipeline", "rpo", tmp_path, overrides))

  assert problems("refine.loss_type=orpho") == [
    "refine.loss_type = 'orpho': must be one of sigmoid, ipo, hinge, dpop, simpo, orpo, nll"
  ]
  # Named by its own override, not by the variant's --config.refine.num_epochs before it.
  assert problems("refine.num_epoch=2") == [
    "--config.refine.num_epoch: the config has no field 'num_epoch'; did you mean num_epochs?"
  ]
  assert cli.command_line_problems(["srit-jax", "pipelin"])[0].startswith("unknown command 'pipelin'")


def test_a_misspelt_setting_stops_the_study_at_launch_naming_each_variant_and_starting_nothing(tmp_path):
  result = subprocess.run(
    [sys.executable, str(ROOT / "studies" / "self_refinement.py"), f"--root={tmp_path}", "--variants=rpo,lora",
     "--overrides=refine.loss_type=orpho", f"--doc={tmp_path / 'study.md'}"],
    capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )  # fmt: skip
  assert result.returncode != 0
  for name in ("rpo", "lora"):
    assert f"[{name}] refine.loss_type = 'orpho': must be one of" in result.stderr
  assert list(tmp_path.iterdir()) == []  # no variant's workdir, no report


def test_a_variant_taught_otherwise_is_paired_with_the_base_sft_student_too(tmp_path):
  root, doc = tmp_path / "runs", tmp_path / "study.md"
  _finished(root, "base", srit_correct=32)
  _finished(root, "cot_vs_direct_nll_demos_100", srit_correct=33)
  results_path = root / "cot_vs_direct_nll_demos_100" / "results.json"
  sft = {"steps_run": 110, "selected_step": 60}  # an SFT that kept its step of lowest held-out loss
  results_path.write_text(json.dumps(json.loads(results_path.read_text()) | {"sft": sft}))

  def answers(variant: str, stage: str, correct: list[bool]) -> None:
    evaluation = root / variant / "eval" / stage
    evaluation.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"test-{i}", "generation": "The answer is 1.", "correct": c} for i, c in enumerate(correct)]
    (evaluation / "wordmath.cot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

  answers("base", "sft", [True, True, False, False])
  (root / "base" / "eval" / "sft" / "DONE.json").write_text("{}")
  answers("cot_vs_direct_nll_demos_100", "sft", [True, False, False, False])
  answers("cot_vs_direct_nll_demos_100", "srit", [True, True, True, False])
  answers("cot_vs_direct_nll_demos_100", "control", [False, True, True, True])
  text, summary = _report(root, doc)
  # Paired question by question with the base's SFT student: 2 of 4 right there.
  assert "| cot_vs_direct_nll_demos_100 | SFT − base SFT | wordmath (in-domain) | 4 | 50.0 | 25.0 | -25.0 " in text
  assert "| cot_vs_direct_nll_demos_100 | SRIT − base SFT | wordmath (in-domain) | 4 | 50.0 | 75.0 | +25.0 " in text
  assert "| cot_vs_direct_nll_demos_100 | control − base SFT | wordmath (in-domain) | 4 | 50.0 | 75.0 | +25.0 " in text
  assert summary["cot_vs_direct_nll_demos_100"]["sft"] == sft and "sft" not in summary["base"]
  paired = summary["cot_vs_direct_nll_demos_100"]["paired"]["wordmath"]["srit_vs_base_sft"]
  assert (paired["only_first_correct"], paired["only_second_correct"]) == (0, 1)
  # The base, taught as itself, is not paired with itself; a task without answers gets no row.
  assert "| base | SFT − base SFT" not in text and "wordmath_ood (out-domain) | 4 |" not in text


def test_a_variant_that_changes_one_thing_is_paired_with_the_student_it_changes(tmp_path):
  root, doc = tmp_path / "runs", tmp_path / "study.md"
  _finished(root, "rpo_dpop", srit_correct=33)
  for stage, correct in (("srit", [True, True, True, False]), ("sft", [False, False, True, False])):
    evaluation = root / "rpo_dpop" / "eval" / stage
    evaluation.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"test-{i}", "generation": "The answer is 1.", "correct": c} for i, c in enumerate(correct)]
    (evaluation / "wordmath.cot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  text, _ = _report(root, doc)
  assert "SRIT − rpo's SRIT" not in text  # rpo_3_rounds has not finished here: nothing to pair with

  _finished(root, "rpo_3_rounds", srit_correct=31)
  evaluation = root / "rpo_3_rounds" / "eval" / "srit_round_1"  # its first round: the same steps as rpo_dpop's
  evaluation.mkdir(parents=True)
  rows = [
    {"id": f"test-{i}", "generation": "The answer is 1.", "correct": c}
    for i, c in enumerate([True, False, False, True])
  ]
  (evaluation / "wordmath.cot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  text, summary = _report(root, doc)
  assert "| rpo_dpop | SRIT − rpo's SRIT | wordmath (in-domain) | 4 | 50.0 | 75.0 | +25.0 " in text
  paired = summary["rpo_dpop"]["paired"]["wordmath"]["srit_vs_versus"]
  assert (paired["only_first_correct"], paired["only_second_correct"]) == (1, 2)
  assert "| rpo_3_rounds | SRIT − " in text and "| rpo_3_rounds | SRIT − rpo" not in text


def test_each_recipe_is_judged_by_the_rule_for_a_new_default_on_both_seeds(tmp_path):
  root, doc = tmp_path / "runs", tmp_path / "study.md"

  def finished(variant: str, wordmath: dict, wordmath_ood: dict) -> None:
    _finished(root, variant, srit_correct=30)
    results = json.loads((root / variant / "results.json").read_text())
    results["paired"] = {"wordmath": wordmath, "wordmath_ood": wordmath_ood}
    (root / variant / "results.json").write_text(json.dumps(results))

  def gain(points: int, p: float) -> dict:
    return {**_paired(30, 30 + points), "mcnemar_p": p}

  # Both seeds beat SFT in and out of domain and beat the control in-domain: the rule is met.
  finished(
    "cot_vs_direct_nll",
    {"srit_vs_sft": gain(6, 0.001), "srit_vs_control": gain(3, 0.01)},
    {"srit_vs_sft": gain(4, 0.02)},
  )
  finished(
    "cot_vs_direct_nll_seed_1",
    {"srit_vs_sft": gain(5, 0.001), "srit_vs_control": gain(2, 0.04)},
    {"srit_vs_sft": gain(3, 0.03)},
  )
  # The second seed's out-of-domain gain misses p < 0.05; the first seed is below its control.
  finished(
    "slip_corrected_nll",
    {"srit_vs_sft": gain(6, 0.001), "srit_vs_control": gain(-2, 0.01)},
    {"srit_vs_sft": gain(4, 0.02)},
  )
  finished(
    "slip_corrected_nll_seed_1",
    {"srit_vs_sft": gain(5, 0.001), "srit_vs_control": gain(2, 0.04)},
    {"srit_vs_sft": gain(3, 0.2)},
  )
  # One seed so far, no control.
  finished("base", {"srit_vs_sft": gain(6, 0.001)}, {"srit_vs_sft": gain(4, 0.02)})
  text, _ = _report(root, doc)
  verdict_rows = [line for line in text.splitlines() if line.endswith("| yes |") or "| no: " in line]
  rows = {line.split(" | ")[0].removeprefix("| "): line for line in verdict_rows}
  assert len(rows) == len(verdict_rows) == 3
  assert rows["cot_vs_direct_nll / cot_vs_direct_nll_seed_1"].endswith(
    "| +6.0 (p 0.001) / +5.0 (p 0.001) | wordmath_ood +4.0 (p 0.020) / wordmath_ood +3.0 (p 0.030) "
    "| +3.0 (p 0.010) / +2.0 (p 0.040) | yes |"
  )
  assert rows["slip_corrected_nll / slip_corrected_nll_seed_1"].endswith(
    "| no: not above its control; second seed: no out-of-domain gain over SFT |"
  )
  assert rows["base"].endswith("| no: no control run; second seed: not defined |")
  # A second seed has no row of its own.
  assert "cot_vs_direct_nll_seed_1" not in rows and "slip_corrected_nll_seed_1" not in rows


def test_a_round_stopped_early_shows_its_steps_run_of_planned_and_its_kept_step_even_at_zero():
  study_report = _study_part("study_report")
  results = {
    "domains": {"wordmath": "in-domain"},
    "stages": {},
    "rounds": [
      {"pairs": 900, "num_steps": 276, "steps_run": 225, "selected": {"step": 125, "heldout_loss": 0.7}},
      {"pairs": 800, "num_steps": 250, "steps_run": 100, "selected": {"step": 0, "heldout_loss": 0.9}},
      {"pairs": 700, "num_steps": 220},  # before steps_run was recorded; its last step kept
    ],
  }
  rounds = study_report._rounds(results)
  assert [study_report._steps(r) for r in rounds] == ["225 of 276", "100 of 250", "220"]
  assert [r["selected_step"] for r in rounds] == [125, 0, 220]


def test_sampled_answers_of_a_parents_students_have_their_own_tables_and_no_verdict(tmp_path):
  from srit_jax import configs
  from srit_jax.configs import checks
  from srit_jax.tasks import registry

  study = _study_module()
  root, doc = tmp_path / "runs", tmp_path / "study.md"
  _finished(root, "base", srit_correct=32)
  name = "cot_vs_direct_nll_sampled"
  assert study.VARIANTS[name].diagnostic
  config = configs.load("wordmath")
  for override in study.VARIANTS[name].overrides:  # as the command line sets them
    key, value = override.split("=", 1)
    block, _, field = key.rpartition(".")
    target = config[block] if block else config
    target[field] = value == "True" if isinstance(target[field], bool) else type(target[field])(value)
  checks.check(config, "pipeline")
  assert registry.evaluation_domains(config) == {"wordmath": "in-domain"}  # in-domain alone
  assert config.eval.sampled_answers == 8 and config.eval.limit == 300

  def sampled(pass_1, pass_8, majority):
    return {
      "samples": 8,
      "temperature": 0.7,
      "pass_at": {
        "1": {"value": pass_1, "ci95": [pass_1 - 0.05, pass_1 + 0.05]},
        "8": {"value": pass_8, "ci95": [0.5, 0.7]},
      },
      "majority": {"n": 300, "accuracy": majority, "ci95": [majority - 0.05, majority + 0.05]},
    }

  workdir = root / name
  workdir.mkdir(parents=True)
  stages = {"sft": (0.3, 0.6, 0.35), "srit": (0.4, 0.55, 0.42), "control": (0.42, 0.65, 0.45)}
  results = {
    "domains": {"wordmath": "in-domain"},
    "stages": {stage: {"wordmath": {"cot": {"accuracy": v[0], "sampled": sampled(*v)}}} for stage, v in stages.items()},
    "paired": {"wordmath": {"srit_vs_sft": _paired(30, 40)}},
    "paired_majority": {"wordmath": {"srit_vs_sft": _paired(35, 42), "srit_vs_control": _paired(45, 42)}},
    "paired_sampled": {
      "wordmath": {
        "srit_vs_sft": {
          "pass@1": {"n": 100, "difference": 0.1, "ci95": [0.06, 0.14]},
          "pass@k": {"k": 8, **_paired(60, 55)},
        },
        "srit_vs_control": {"pass@1": {"n": 100, "difference": -0.02, "ci95": [-0.04, 0.0]}},  # counts differed
      }
    },
    "pairs": {"pairs": 12},
    "rounds": [{"pairs": 12, "num_steps": 20, "heldout_curve": {"10": {"eval/rewards/accuracies": 0.75}}}],
  }
  (workdir / "results.json").write_text(json.dumps(results))
  (workdir / "STUDY_DONE").write_text(json.dumps({"seconds": 60.0, "overrides": []}))
  text, summary = _report(root, doc)
  assert "| cot_vs_direct_nll_sampled | wordmath (in-domain) | SRIT | 300 | 8 (0.7) | 40.0 (35.0–45.0) | 55.0 " in text
  assert "| cot_vs_direct_nll_sampled | wordmath (in-domain) | control | 300 | 8 (0.7) | 42.0 " in text
  majority = text.split("The majority votes paired on the same questions:")[1]
  assert "| cot_vs_direct_nll_sampled | SRIT − SFT | wordmath (in-domain) | 100 | 35.0 | 42.0 | +7.0 " in majority
  assert "| cot_vs_direct_nll_sampled | SRIT − control | wordmath (in-domain) | 100 | 45.0 | 42.0 | -3.0 " in majority
  verdicts = text.split("| variant | comparison |")[0]
  assert "| base |" in verdicts and name not in verdicts  # a diagnostic, not a recipe
  assert "| cot_vs_direct_nll_sampled | SRIT − SFT | wordmath (in-domain) | 100 | 30.0 | 40.0" not in text
  assert summary[name]["paired_majority"] == results["paired_majority"]
  reach = majority.split("only first / only second reach | McNemar p |")[1]
  assert "| cot_vs_direct_nll_sampled | SRIT − SFT | wordmath (in-domain) | 100 | +10.0 (+6.0, +14.0) | -5.0 (" in reach
  assert "| SRIT − control | wordmath (in-domain) | 100 | -2.0 (-4.0, +0.0) | — | — | — |" in reach
  assert summary[name]["paired_sampled"] == results["paired_sampled"]


def test_the_status_of_the_study_says_which_variants_finished_which_are_queued_and_where_one_stands(tmp_path):
  _finished(tmp_path, "base", 33)
  (tmp_path / "rpo_3_rounds" / "refine_2").mkdir(parents=True)  # a variant under way: its second round sampling
  for name in ("demos", "sft", "refine"):
    (tmp_path / "rpo_3_rounds" / name).mkdir()
    (tmp_path / "rpo_3_rounds" / name / "DONE.json").write_text("{}")
  (tmp_path / "rpo_3_rounds" / "refine_2" / "samples.cot.jsonl").write_text('{"sample": 0}\n')
  result = subprocess.run(
    [sys.executable, str(ROOT / "studies" / "self_refinement.py"), f"--root={tmp_path}", "--status",
     "--variants=base,rpo_3_rounds,sft_best_heldout"],
    capture_output=True, text=True, timeout=300,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "[base] finished" in out and "[sft_best_heldout] queued" in out
  under_way = out.split("[rpo_3_rounds]")[1]
  # Its own settings give its phases: three rounds of each chain, every round evaluated.
  assert "| refine_2 | under way |" in under_way and "| refine_control_3 | not started |" in under_way
  assert "| eval/srit_round_2 | not started |" in under_way and "3 of 13 phases done" in under_way


def test_the_largest_gain_the_intervals_allow_is_the_highest_upper_end_of_each_comparison():
  study_verdicts = _study_part("study_verdicts")

  def paired(high: float) -> dict:
    return {"ci95": [high - 0.05, high], "difference": high - 0.025, "mcnemar_p": 0.5}

  domains = {"wordmath": "in-domain", "wordmath_ood": "out-domain", "wordmath_hard": "out-domain"}
  summary = {
    "cot_vs_direct_nll": {
      "domains": domains,
      "paired": {
        "wordmath": {"srit_vs_sft": paired(0.074), "srit_vs_control": paired(-0.009)},
        "wordmath_ood": {"srit_vs_sft": paired(0.018), "srit_vs_control": paired(0.30)},  # not in the rule
        "wordmath_hard": {"srit_vs_sft": paired(0.010)},
      },
    },
    "cot_vs_direct_nll_demos_100_last_control": {
      "domains": domains,
      "paired": {
        "wordmath": {"srit_vs_sft": paired(0.051), "srit_vs_control": paired(0.017)},
        "wordmath_ood": {"srit_vs_sft": paired(0.012)},
        "wordmath_hard": {"srit_vs_sft": paired(0.026)},
      },
    },
    # Replaced by the rerun of its control above, and a diagnostic: neither counts.
    "cot_vs_direct_nll_demos_100": {"domains": domains, "paired": {"wordmath": {"srit_vs_control": paired(0.5)}}},
    "cot_vs_direct_nll_sampled": {"domains": domains, "paired": {"wordmath": {"srit_vs_sft": paired(0.5)}}},
  }
  for variant in summary.values():
    for task in domains:
      variant["paired"].setdefault(task, {})
  assert study_verdicts.largest_gains_allowed(summary) == (
    "The largest gain the 95% intervals allow, over every recipe and seed reported: "
    "SRIT − SFT in-domain +7.4 points (cot_vs_direct_nll); "
    "SRIT − control in-domain +1.7 points (cot_vs_direct_nll_demos_100_last_control); "
    "SRIT − SFT out of domain +2.6 points (cot_vs_direct_nll_demos_100_last_control, wordmath_hard)."
  )


def test_the_study_script_imports_the_srit_jax_of_its_own_checkout(tmp_path):
  """The study runs from a worktree for hours while another checkout is installed: its report
  (some of it imported late) must read the worktree's package, as its pipelines do."""
  import shutil

  checkout = tmp_path / "checkout"
  shutil.copytree(ROOT / "studies", checkout / "studies", ignore=shutil.ignore_patterns("__pycache__"))
  (checkout / "srit_jax").mkdir()
  (checkout / "srit_jax" / "__init__.py").write_text('raise ImportError("the checkout\'s own srit_jax")\n')
  result = subprocess.run(
    [sys.executable, str(checkout / "studies" / "self_refinement.py"), "--report_only", f"--root={tmp_path}"],
    capture_output=True,
    text=True,
    timeout=120,
    env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
  )
  assert result.returncode != 0 and "the checkout's own srit_jax" in result.stderr, result.stderr[-2000:]
