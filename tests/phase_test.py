"""A phase's marker: done, resumed, or taken over from another run that finished it."""

import json
import pathlib

import pytest

from srit_jax.phases import status
from srit_jax.phases.phase import RUN_CONFIG, Phase, other_runs


def test_a_phase_another_run_finished_with_the_same_inputs_is_linked_from_it_not_run(tmp_path, capsys):
  study = tmp_path / "study"
  other, here = study / "other", study / "here"

  def finished(workdir, settings, text):
    phase = Phase(workdir, "refine", settings, str(workdir / "sft" / "export"))
    assert not phase.done()
    for folder in ("export", "checkpoints/20", "best_checkpoint/10"):
      (phase.dir / folder).mkdir(parents=True)
      (phase.dir / folder / "model.safetensors").write_text(text)
    (phase.dir / "best_checkpoint.json").write_text('{"step": 10}')
    phase.finish({"summary": {"made_in": str(workdir)}})
    return phase

  made = finished(other, {"beta": 0.1}, "weights")
  for workdir in (other, here, study / "not_a_run"):
    workdir.mkdir(parents=True, exist_ok=True)
  for workdir in (other, here):
    (workdir / RUN_CONFIG).write_text("{}")
  assert other_runs(str(study), here) == (other,)  # the workdirs in a folder, this one left out
  assert other_runs(f"{other}, {study}", here) == (other, other)
  assert other_runs(str(other), other) == ()
  # An interrupted run here gives way to the finished one: its files become links to that run's.
  (here / "refine" / "checkpoints" / "5").mkdir(parents=True)
  (here / "refine" / "checkpoints" / "5" / "model.safetensors").write_text("an interrupted run's")
  reused = Phase(here, "refine", {"beta": 0.1}, str(here / "sft" / "export"), reuse_from=(other,))
  assert reused.fingerprint == made.fingerprint  # the paths inside each workdir are its own
  assert reused.done()
  assert (
    f"[refine] done with the same inputs in {other / 'refine'}: linked from there, not run" in capsys.readouterr().out
  )
  linked = sorted(p.relative_to(here / "refine") for p in (here / "refine").rglob("*") if p.is_file())
  # All but its training state (which only resumes it) and the checkpoints of the interrupted run here.
  made_files = sorted(p.relative_to(other / "refine") for p in (other / "refine").rglob("*") if p.is_file())
  assert linked == [p for p in made_files if p.parts[0] not in ("checkpoints", "best_checkpoint")]
  assert pathlib.Path("export/model.safetensors") in linked and pathlib.Path("best_checkpoint.json") in linked
  assert not (here / "refine" / "checkpoints").exists()
  assert all((here / "refine" / p).samefile(other / "refine" / p) for p in linked if p.name != "DONE.json")
  # The marker is this run's own file, saying where the phase was made; the other run's is untouched.
  assert not (here / "refine" / "DONE.json").samefile(other / "refine" / "DONE.json")
  assert reused.recorded() == {**made.recorded(), "taken_over_from": str(other / "refine")}
  assert "taken_over_from" not in made.recorded()
  assert reused.recorded()["summary"] == {"made_in": str(other)}
  assert "taken over from " + str(other / "refine") in status.phase_status(here / "refine", "refine").details
  # Taken over again from here, it names the run that made it.
  again = study / "again"
  assert Phase(again, "refine", {"beta": 0.1}, str(again / "sft" / "export"), reuse_from=(here,)).done()
  assert json.loads((again / "refine" / "DONE.json").read_text())["taken_over_from"] == str(other / "refine")
  assert Phase(here, "refine", {"beta": 0.1}, str(here / "sft" / "export")).done()  # now done here
  # Other inputs: nothing linked, the phase runs.
  third = tmp_path / "third"
  assert not Phase(third, "refine", {"beta": 0.1}, "another upstream", reuse_from=(other,)).done()
  assert not Phase(third, "refine", {"beta": 0.2}, str(third / "sft" / "export"), reuse_from=(other,)).done()
  assert not (third / "refine" / "DONE.json").exists()


def test_a_phase_is_skipped_when_done_resumed_when_interrupted_and_rerun_when_its_inputs_change(tmp_path, capsys):
  made = Phase(tmp_path, "refine", {"beta": 0.1}, "upstream")
  assert not made.done()
  (made.dir / "samples.cot.jsonl").write_text("kept\n")
  (made.dir / "pairs.jsonl").write_text("remade\n")
  assert not Phase(tmp_path, "refine", {"beta": 0.1}, "upstream").done()  # interrupted: it resumes
  assert f"[refine] resuming an interrupted run in {made.dir}" in capsys.readouterr().out
  made.finish({"summary": {"pairs": 1}})
  marker = made.recorded()
  assert marker["fingerprint"] == made.fingerprint and marker["summary"] == {"pairs": 1}
  assert marker["attempts"] == 2 and marker["seconds"] >= 0 and marker["peak_rss_bytes"] > 0  # started, resumed

  assert Phase(tmp_path, "refine", {"beta": 0.1}, "upstream").done()
  assert "[refine] done already, skipped" in capsys.readouterr().out
  # Other settings, or another upstream: run again, keeping only what carries its own fingerprint.
  for inputs in (({"beta": 0.2}, "upstream"), ({"beta": 0.1}, "another upstream")):
    (made.dir / "DONE.json").write_text(json.dumps(marker))
    rerun = Phase(tmp_path, "refine", *inputs, keep=("samples.cot.jsonl",))
    assert rerun.fingerprint != made.fingerprint and not rerun.done()
    assert "running it again (keeping samples.cot.jsonl, remade if stale)" in capsys.readouterr().out
    assert sorted(p.name for p in made.dir.iterdir() if p.name != "attempts.json") == ["samples.cot.jsonl"]


def test_a_takeover_killed_midway_is_not_found_done(tmp_path, monkeypatch):
  from srit_jax import io

  other, here = tmp_path / "other", tmp_path / "here"
  made = Phase(other, "sft", {"lr": 1e-4}, "demos")
  assert not made.done()
  for name in ("export/model.safetensors", "export/config.json", "sft_summary.json"):
    (made.dir / name).parent.mkdir(parents=True, exist_ok=True)
    (made.dir / name).write_text(name)
  made.finish()
  linked, link = [], io._link_file

  def killed_after_two(source, target):
    if len(linked) == 2:
      raise KeyboardInterrupt("killed")
    linked.append(target.name)
    link(source, target)

  monkeypatch.setattr(io, "_link_file", killed_after_two)
  with pytest.raises(KeyboardInterrupt, match="killed"):
    Phase(here, "sft", {"lr": 1e-4}, "demos", reuse_from=(other,)).done()
  assert linked and "DONE.json" not in linked and not (here / "sft" / "DONE.json").exists()
  monkeypatch.setattr(io, "_link_file", link)
  assert Phase(here, "sft", {"lr": 1e-4}, "demos", reuse_from=(other,)).done()  # taken over whole now
  files = lambda folder: sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
  assert files(here / "sft") == files(other / "sft")
