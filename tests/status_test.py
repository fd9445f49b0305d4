"""`srit-jax status`: where a run stands, read from its workdir while it runs or after a kill."""

import json
import os
import socket
import subprocess
import sys

import pytest

from srit_jax import cli
from srit_jax.phases import pipeline, status, workdir_lock


def _lines(path, records, cut_short: str = "") -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps(r) + "\n" for r in records) + cut_short)


def _training_phase(folder, *, reached: int, saved=(), held_out=None, num_steps=100, patience=0, every=10):
  """A training phase's files as the training loop leaves them: 2 s a step (100 tokens at 50/s)."""
  _lines(folder / "metrics.jsonl", [], "")
  records = []
  for step in range(1, reached + 1):
    records.append({"step": step, "loss": 1.0, "tokens": 100.0, "tokens_per_s": 50.0})
    if held_out and step in held_out:
      records.append({"step": step, "eval/loss": held_out[step]})
  _lines(folder / "metrics.jsonl", records, cut_short='{"step": 99, "loss"')  # a line a kill cut short
  (folder / "run.json").write_text(
    json.dumps({"num_steps": num_steps, "eval_every": every, "early_stopping_patience": patience})
  )
  for step in saved:
    (folder / "checkpoints" / str(step)).mkdir(parents=True)
  (folder / "checkpoints" / f"{reached}.orbax-checkpoint-tmp-1").mkdir(parents=True)  # a save under way
  if held_out:
    best = min(held_out, key=held_out.get)
    (folder / "best_checkpoint.json").write_text(json.dumps({"step": best, "loss": held_out[best]}))


def test_a_training_phase_under_way_shows_its_steps_its_held_out_loss_and_the_time_to_its_end(tmp_path):
  _training_phase(tmp_path / "sft", reached=30, saved=(10, 20))
  phase = status.phase_status(tmp_path / "sft", "sft")
  assert phase.state == status.UNDER_WAY
  assert phase.details[0] == "step 30 of 100 reached, step 20 saved"  # the save under way not counted
  assert phase.seconds_left == pytest.approx(70 * 2.0)  # 70 steps at the 2 s of the recent steps

  # Stopping early: 2 evaluations without a new low after step 20 end it at step 40.
  _training_phase(tmp_path / "dpo", reached=30, saved=(30,), held_out={10: 0.5, 20: 0.4, 30: 0.45}, patience=2)
  phase = status.phase_status(tmp_path / "dpo", "refine")
  assert "held-out loss lowest at step 20 (0.4000), last evaluated at step 30" in phase.details
  assert phase.seconds_left == pytest.approx(10 * 2.0)
  assert phase.details[-1].endswith("to step 40 if it stops early then")
  # The untrained start, evaluated before step 1 and kept, is the lowest: the run ends at step 20.
  (tmp_path / "dpo" / "best_checkpoint.json").write_text(json.dumps({"step": 0, "loss": 0.3}))
  phase = status.phase_status(tmp_path / "dpo", "refine")
  assert "held-out loss lowest at step 0 (0.3000), last evaluated at step 30" in phase.details
  assert phase.seconds_left == 0 and phase.details[-1].endswith("to step 20 if it stops early then")


def test_a_run_chosen_by_another_loss_shows_that_loss(tmp_path):
  _training_phase(tmp_path / "dpo", reached=20, saved=(20,), held_out={10: 0.5, 20: 0.4})
  metrics = tmp_path / "dpo" / "metrics.jsonl"
  records = [json.loads(line) for line in metrics.read_text().splitlines()[:-1]]  # the line cut short left out
  for record in records:  # the run's own loss rises while its selection loss falls
    if "eval/loss" in record:
      record.update({"eval/loss": 2.0 - record["eval/loss"], "eval/selection_loss": record["eval/loss"]})
  _lines(metrics, records)
  run = json.loads((tmp_path / "dpo" / "run.json").read_text())
  (tmp_path / "dpo" / "run.json").write_text(json.dumps({**run, "selection_loss": "sigmoid"}))
  phase = status.phase_status(tmp_path / "dpo", "refine")
  assert "held-out sigmoid loss lowest at step 20 (0.4000), last evaluated at step 20" in phase.details


def test_the_step_reached_counts_a_held_out_loss_logged_before_its_steps_own_line(tmp_path):
  # The loop writes step 30's metrics once step 31 is under way; its evaluation and save came first.
  _training_phase(tmp_path / "sft", reached=29, saved=(20, 30), held_out={10: 0.5, 20: 0.4})
  metrics = tmp_path / "sft" / "metrics.jsonl"
  whole_lines = metrics.read_text().splitlines(keepends=True)[:-1]  # less the line a kill cut short
  metrics.write_text("".join(whole_lines) + json.dumps({"step": 30, "eval/loss": 0.3}) + "\n")
  phase = status.phase_status(tmp_path / "sft", "sft")
  assert phase.details[0] == "step 30 of 100 reached, step 30 saved"
  assert "held-out loss lowest at step 30 (0.3000), last evaluated at step 30" in phase.details


def test_finished_phases_say_what_they_kept(tmp_path):
  _training_phase(tmp_path / "refine", reached=40, held_out={10: 0.5, 20: 0.4, 30: 0.45, 40: 0.46}, patience=2)
  (tmp_path / "refine" / "DONE.json").write_text("{}")
  phase = status.phase_status(tmp_path / "refine", "refine")
  assert (phase.state, phase.details) == (status.DONE, ["40 steps run, step 20 kept (lowest held-out loss 0.4000)"])

  evaluation = tmp_path / "eval" / "sft"
  entry = {"n": 200, "correct": 73, "accuracy": 0.365, "ci95": [0.3, 0.43]}
  evaluation.mkdir(parents=True)
  (evaluation / "summary.json").write_text(json.dumps({"arith": {"cot": entry}}))
  (evaluation / "results.md").write_text("table\n")
  phase = status.phase_status(evaluation, "eval/sft")
  assert (phase.state, phase.details) == (status.DONE, ["arith cot 36.5% of 200"])
  # A pipeline's phase says how long it took, over how many attempts.
  (evaluation / "DONE.json").write_text(json.dumps({"seconds": 754.0, "attempts": 1}))
  assert status.phase_status(evaluation, "eval/sft").details == ["arith cot 36.5% of 200", "took 13 min"]
  (tmp_path / "refine" / "DONE.json").write_text(json.dumps({"seconds": 7200.0, "attempts": 3}))
  assert status.phase_status(tmp_path / "refine", "refine").details[-1] == "took 2.0 h over 3 attempts"


def test_sampling_under_way_counts_the_whole_lines_of_each_file(tmp_path):
  folder = tmp_path / "refine"
  _lines(folder / "samples.cot.jsonl", [{"sample": i} for i in range(5)], cut_short='{"sam')
  (folder / "samples.cot.jsonl.meta.json").write_text(json.dumps({"inputs": "x", "records": 4, "num_samples": 2}))
  phase = status.phase_status(folder, "refine")
  assert (phase.state, phase.details) == (status.UNDER_WAY, ["samples.cot.jsonl 5 of 8 lines"])
  assert status.phase_status(tmp_path / "missing", "refine_2").state == status.NOT_STARTED


def test_the_phases_a_pipeline_makes_in_its_order_on_disk_and_still_to_come(tmp_path):
  from conftest import load_config

  config = load_config("pipeline")
  config.update(refine_iterations=2, control=True, eval_rounds=True, eval_untuned=False)
  assert pipeline.phase_names(config) == [
    "demos", "sft", "refine", "refine_2", "refine_control", "refine_control_2",
    "eval/sft", "eval/srit", "eval/control", "eval/srit_round_1",
  ]  # fmt: skip
  config.update(refine_iterations=1, control=False, eval_rounds=False, eval_untuned=True)
  assert pipeline.phase_names(config) == ["demos", "sft", "refine", "eval/untuned", "eval/sft", "eval/srit"]

  for name in ("refine_control", "eval/sft", "refine_2", "sft", "demos", "refine"):
    (tmp_path / name).mkdir(parents=True)
    (tmp_path / name / "DONE.json").write_text("{}")
  on_disk = [p.name for p in status.workdir_status(tmp_path)["phases"]]
  assert on_disk == ["demos", "sft", "refine", "refine_2", "refine_control", "eval/sft"]
  config.update(refine_iterations=2, control=True, eval_rounds=True, eval_untuned=False)
  phases = status.workdir_status(tmp_path, pipeline.phase_names(config))["phases"]
  assert [p.state for p in phases].count(status.NOT_STARTED) == 4  # refine_control_2 and three evaluations
  # Without a config given, the one the pipeline recorded when it started.
  (tmp_path / pipeline.RUN_CONFIG).write_text(config.to_json())
  assert [p.name for p in status.run(tmp_path)["phases"]] == pipeline.phase_names(config)

  # The wall time of the phases done, where they kept it.
  text = status.report(tmp_path, status.workdir_status(tmp_path))
  assert text.endswith("6 of 6 phases done")  # phases finished before their time was kept
  (tmp_path / "sft" / "DONE.json").write_text(json.dumps({"seconds": 1800}))
  (tmp_path / "refine" / "DONE.json").write_text(json.dumps({"seconds": 3600}))
  text = status.report(tmp_path, status.workdir_status(tmp_path))
  assert text.endswith("6 of 6 phases done; 2 of them took 1.5 h of wall time")
  for name in ("refine_control", "eval/sft", "refine_2", "demos"):
    (tmp_path / name / "DONE.json").write_text(json.dumps({"seconds": 900}))
  text = status.report(tmp_path, status.workdir_status(tmp_path))
  assert text.endswith("6 of 6 phases done, in 2.5 h of wall time")
  # A phase taken over from another run: that run's time, none of this one's.
  (tmp_path / "refine" / "DONE.json").write_text(json.dumps({"seconds": 3600, "taken_over_from": "/runs/a/refine"}))
  text = status.report(tmp_path, status.workdir_status(tmp_path))
  assert "| refine | done | taken over from /runs/a/refine |" in text
  assert text.endswith("6 of 6 phases done, in 1.5 h of wall time (1 taken over from other runs)")


def _lock(workdir, pid: int) -> None:
  record = {"host": socket.gethostname(), "pid": pid, "since": "2026-12-04 20:02:01", "token": "t"}
  (workdir / workdir_lock.LOCK_NAME).write_text(json.dumps(record))


def test_the_live_run_holding_a_workdir_is_named_and_a_dead_ones_lock_is_not(tmp_path):
  (tmp_path / "refine").mkdir()
  (tmp_path / "refine" / "samples.cot.jsonl").write_text("{}\n")
  _lock(tmp_path, os.getpid())
  text = status.report(tmp_path, status.workdir_status(tmp_path))
  assert f"a run is under way (pid {os.getpid()} on {socket.gethostname()}" in text.splitlines()[0]
  assert "results:" not in text
  # A phase's folder is held through its pipeline's workdir.
  assert status.workdir_status(tmp_path / "refine")["holder"]["pid"] == os.getpid()

  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  _lock(tmp_path, int(dead.stdout))
  text = status.report(tmp_path, status.workdir_status(tmp_path))
  assert text.splitlines()[0].endswith("no run holds it; the same command resumes the phase under way")
  assert "| refine | under way |" in text and "0 of 1 phases done" in text


def test_the_command_needs_a_workdir_that_exists(tmp_path, capsys):
  assert cli.main(["srit-jax", "status"]) == 2
  assert "status needs --workdir=DIR" in capsys.readouterr().err
  assert cli.main(["srit-jax", "status", f"--workdir={tmp_path / 'nope'}"]) == 1
  assert f"{tmp_path / 'nope'}: no such workdir" in capsys.readouterr().err
  (tmp_path / "demos").mkdir()
  (tmp_path / "demos" / "demos.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
  (tmp_path / "demos" / "summary.json").write_text("{}")
  assert cli.main(["srit-jax", "status", f"--workdir={tmp_path}", "--config=configs/demo.py"]) == 0
  out = capsys.readouterr().out
  assert "| demos | done | 2 demonstrations kept |" in out and "| eval/srit | not started |  |" in out
  (tmp_path / "results.md").write_text("table\n")
  assert cli.main(["srit-jax", "status", f"--workdir={tmp_path}"]) == 0  # every phase on disk done
  assert capsys.readouterr().out.splitlines()[-1] == f"results: {tmp_path / 'results.md'}"


def test_a_metrics_line_broken_amid_whole_ones_is_named_by_file_and_line(tmp_path):
  _training_phase(tmp_path / "sft", reached=3)
  metrics = tmp_path / "sft" / "metrics.jsonl"
  lines = metrics.read_text().splitlines(keepends=True)
  metrics.write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
  with pytest.raises(ValueError, match=rf"{metrics}:2: not valid JSON"):
    status.phase_status(tmp_path / "sft", "sft")
