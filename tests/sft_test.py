"""The SFT run: records with errors, the data iterator, checkpoints, exact resume after kill -9,
the NaN guard, metrics and export."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import checkpoint_being_saved, kill_at_moments, load_config, subprocess_env, write_instruction_records
from safetensors.numpy import load_file

from srit_jax.conversion import hf_checkpoint
from srit_jax.data import records
from srit_jax.data import sft_batches as data_iterator
from srit_jax.data import sft_examples as sft_data
from srit_jax.phases import sft as sft_loop
from srit_jax.training.loop import NonFiniteLossError


def _write_records(path, n=16):
  return write_instruction_records(path, n)


def _config(model_dir, train_file, **overrides):
  config = load_config("sft", "tiny")
  config.model, config.train_file = str(model_dir), str(train_file)
  config.mesh.update(data=1, fsdp=4, tensor=1)  # the loop sharded over 4 of the 8 emulated devices
  config.update(overrides)
  return config


# --- Records -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "line, message",
  [
    ('{"input": "", "output": "A."}', "line 2.*field 'instruction' is missing"),
    ('{"instruction": 7, "output": "A."}', "field 'instruction' must be a string, got int"),
    ('{"instruction": "Q?", "output": "  "}', "field 'output' is empty"),
    ('{"instruction": "Q?", "output": "A."', "not valid JSON"),
    ('["instruction", "output"]', "expected a JSON object"),
  ],
)
def test_bad_records_name_file_line_and_field(tmp_path, line, message):
  path = tmp_path / "r.jsonl"
  path.write_text('{"instruction": "Q?", "output": "A."}\n' + line + "\n")
  with pytest.raises(records.RecordError, match=message.replace("line 2", r"r\.jsonl:2:")):
    records.read_instruction_records(path)


def test_non_utf8_bytes_are_named_and_bad_records_can_be_skipped_and_counted(tmp_path):
  path = tmp_path / "r.jsonl"
  path.write_bytes(b'{"instruction": "Q?", "output": "A."}\n{"instruction": "\xff\xfe", "output": "A."}\n{"x": 1}\n')
  with pytest.raises(records.RecordError, match=r"r\.jsonl:2: bytes that are not UTF-8"):
    records.read_instruction_records(path)
  report = records.ReadReport()
  kept = records.read_instruction_records(path, skip_bad_records=True, report=report)
  assert [r.source for r in kept] == [f"{path}:1"]
  assert report.read == 1 and sum(report.skipped.values()) == 2


# --- Data iterator -------------------------------------------------------------------------------


def _examples(n=20):
  rng = np.random.default_rng(0)
  return [
    sft_data.TokenizedExample(rng.integers(3, 100, k).tolist(), [0, 0] + [1] * (k - 2)) for k in rng.integers(4, 12, n)
  ]


def test_iterator_state_restores_the_same_batches():
  make = lambda: data_iterator.PackedBatchIterator(_examples(), batch_size=4, row_length=16, seed=3)
  first = make()
  for _ in range(3):
    next(first)
  state = first.get_state()
  expected = [next(first).tokens for _ in range(4)]  # crosses an epoch boundary
  second = make()
  second.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(second).tokens, want)


@pytest.mark.parametrize("epochs", [1, 2.5, 0.01])
def test_epochs_take_the_batches_that_pass_over_every_example_that_often(epochs):
  examples = _examples()
  iterator = data_iterator.PackedBatchIterator(examples, batch_size=4, row_length=16, seed=3)
  next(iterator)
  state = iterator.get_state()
  steps = iterator.steps_for_epochs(epochs)
  assert iterator.get_state() == state  # counting moves nothing

  def examples_in(batch):  # the segments of each row
    return sum(len(set(row[row > 0].tolist())) for row in batch.segment_ids)

  fresh = data_iterator.PackedBatchIterator(examples, batch_size=4, row_length=16, seed=3)
  seen = np.cumsum([examples_in(next(fresh)) for _ in range(steps)])
  assert seen[-1] >= epochs * len(examples)
  assert steps == 1 or seen[-2] < epochs * len(examples)


def test_each_process_gets_its_own_rows_of_the_global_batch():
  full = data_iterator.PackedBatchIterator(
    _examples(), batch_size=4, row_length=16, seed=3, process_count=1, process_index=0
  )
  global_batch = next(full).tokens
  parts = []
  for index in range(2):
    it = data_iterator.PackedBatchIterator(
      _examples(), batch_size=4, row_length=16, seed=3, process_count=2, process_index=index
    )
    parts.append(next(it).tokens)
  np.testing.assert_array_equal(np.concatenate(parts), global_batch)


# --- The run ---------------------------------------------------------------------------------------


def test_run_writes_metrics_checkpoints_and_an_export_transformers_loads(tiny_with_tokenizer, tmp_path):
  import transformers

  train_file = _write_records(tmp_path / "demos.jsonl")
  config = _config(tiny_with_tokenizer, train_file, eval_file=str(train_file), eval_every=4)
  result = sft_loop.train(config, tmp_path / "run")
  lines = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
  steps = [line for line in lines if "loss" in line]
  assert [line["step"] for line in steps] == list(range(1, 9))
  assert steps[-1]["loss"] < steps[0]["loss"]
  assert {"grad_norm", "learning_rate", "tokens_per_s", "mfu"} <= set(steps[0])
  assert [line["step"] for line in lines if "eval_loss" in line] == [4, 8]
  assert sorted(os.listdir(tmp_path / "run/checkpoints")) == ["4", "6", "8"]
  assert any((tmp_path / "run/tensorboard").iterdir())
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(result.export_dir)
  assert reloaded.config.vocab_size == 512
  _, exported = hf_checkpoint.load_hf_checkpoint(result.export_dir)
  jax.tree.map(np.testing.assert_array_equal, exported, jax.device_get(result.state.params))


def _best_heldout_config(model_dir, train_file, **overrides):
  """A quarter of the questions held out, evaluated every step, the step of lowest held-out loss
  kept; big constant steps, so that the held-out loss falls and then rises."""
  config = _config(
    model_dir, train_file, heldout_fraction=0.25, eval_every=1, select_checkpoint="best_heldout", **overrides
  )
  config.optimizer.update(learning_rate=3e-2, schedule="constant")
  return config


def test_held_out_questions_choose_the_step_exported_and_stop_the_run_early(tiny_with_tokenizer, tmp_path):
  from safetensors.numpy import load_file

  patience = 2
  train_file = _write_records(tmp_path / "demos.jsonl")
  config = _best_heldout_config(tiny_with_tokenizer, train_file, num_steps=24, early_stopping_patience=patience)
  workdir = tmp_path / "run"
  result = sft_loop.train(config, workdir)
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  curve = {line["step"]: line["eval_loss"] for line in lines if "eval_loss" in line}
  stop = result.steps_run
  assert 1 < stop < config.num_steps, curve  # it stopped early
  assert sorted(curve) == list(range(1, stop + 1))
  assert [line["step"] for line in lines if "loss" in line] == list(range(1, stop + 1))

  def lowest_up_to(step):
    return min(range(1, step + 1), key=lambda s: (curve[s], s))

  # The first step `patience` evaluations past the lowest loss so far: not one step later.
  assert stop - lowest_up_to(stop) == patience
  assert all(step - lowest_up_to(step) < patience for step in range(1, stop))
  best = lowest_up_to(stop)
  assert result.selected_step == best and int(result.state.step) == stop
  summary = json.loads((workdir / "sft_summary.json").read_text())
  assert (summary["num_steps"], summary["steps_run"]) == (config.num_steps, stop)
  assert summary["selected"] == {"step": best, "heldout_loss": curve[best]}
  assert {int(step): loss for step, loss in summary["heldout_curve"].items()} == curve

  # The export is the kept step's student: the same bytes as a run of that many steps that
  # keeps its last (the schedule is constant, the data order the same).
  plain = _config(tiny_with_tokenizer, train_file, heldout_fraction=0.25, num_steps=best, save_every=best)
  plain.optimizer.update(learning_rate=3e-2, schedule="constant")
  sft_loop.train(plain, tmp_path / "plain")
  exported = load_file(str(workdir / "export/model.safetensors"))
  for name, value in load_file(str(tmp_path / "plain/export/model.safetensors")).items():
    np.testing.assert_array_equal(exported[name], value, err_msg=name)

  # Run again: the stopped run trains no further and exports the same student.
  again = sft_loop.train(config, workdir)
  assert (again.steps_run, again.selected_step) == (stop, best)
  for name, value in load_file(str(workdir / "export/model.safetensors")).items():
    np.testing.assert_array_equal(value, exported[name], err_msg=name)


def test_a_run_in_epochs_takes_its_steps_from_the_packed_examples(tiny_with_tokenizer, tmp_path):
  import transformers

  train_file = _write_records(tmp_path / "demos.jsonl")
  config = _config(tiny_with_tokenizer, train_file, num_epochs=1.5, export=False)
  result = sft_loop.train(config, tmp_path / "run")
  summary = json.loads((tmp_path / "run" / "sft_summary.json").read_text())
  tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_with_tokenizer)
  recs = records.read_instruction_records(train_file)
  examples = sft_loop.tokenize_records(tokenizer, recs, config, sft_data.TokenizeStats())
  iterator = data_iterator.PackedBatchIterator(examples, batch_size=4, row_length=config.max_length, seed=config.seed)
  steps = iterator.steps_for_epochs(1.5)
  assert summary["num_steps"] == summary["steps_run"] == int(result.state.step) == steps != config.num_steps
  # Resumed with the same epochs: the derived length is the run's own, nothing is trained again.
  again = sft_loop.train(config, tmp_path / "run")
  assert int(again.state.step) == summary["steps_run"]


def test_held_out_questions_never_train_and_hold_each_question_whole(tmp_path):
  train_file = _write_records(tmp_path / "demos.jsonl")
  recs = records.read_instruction_records(train_file)
  recs += recs[:4]  # a question answered twice
  training, held_out = sft_loop.split_held_out(recs, 0.25, seed=0)
  question = lambda r: (r.instruction, r.input)
  assert held_out and training and len(training) + len(held_out) == len(recs)
  assert not {question(r) for r in training} & {question(r) for r in held_out}
  assert sft_loop.split_held_out(recs, 0.25, seed=1) != (training, held_out)  # another seed, another share


def test_a_held_out_share_that_leaves_nothing_to_train_is_refused_naming_the_file(tiny_with_tokenizer, tmp_path):
  train_file = _write_records(tmp_path / "demos.jsonl")
  config = _config(tiny_with_tokenizer, train_file, heldout_fraction=0.9999)
  with pytest.raises(ValueError, match=r"demos\.jsonl: heldout_fraction=0.9999 leaves 0 training and 16 held-out"):
    sft_loop.train(config, tmp_path / "run")


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(select_checkpoint="best_heldout", eval_every=1), r"select_checkpoint = 'best_heldout': needs held-out"),
    (dict(select_checkpoint="best_heldout", heldout_fraction=0.25), r"best_heldout': needs eval_every > 0"),
    (dict(early_stopping_patience=2, heldout_fraction=0.25, eval_every=1), "stopping early needs select_checkpoint"),
    (dict(heldout_fraction=0.25, eval_file="SELF"), r"heldout_fraction = 0.25 with eval_file: one held-out set"),
  ],
)
def test_choosing_the_step_by_held_out_loss_needs_held_out_data_and_evaluations(
  tiny_with_tokenizer, tmp_path, overrides, message
):
  from srit_jax.configs import checks

  train_file = _write_records(tmp_path / "demos.jsonl")
  if overrides.get("eval_file") == "SELF":
    overrides["eval_file"] = str(train_file)
  config = _config(tiny_with_tokenizer, train_file, **overrides)
  with pytest.raises(checks.ConfigError, match=message):
    sft_loop.train(config, tmp_path / "run")
  assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_with_tokenizer, tmp_path):
  import re

  from srit_jax.training import checkpointing

  train_file = _write_records(tmp_path / "demos.jsonl")

  def config(num_steps):
    c = _config(tiny_with_tokenizer, train_file, num_steps=num_steps, save_every=1, export=False)
    c.optimizer.update(learning_rate=1e9, schedule="constant", warmup_steps=0)  # diverges within a step or two
    return c

  with pytest.raises(NonFiniteLossError) as error:
    sft_loop.train(config(8), tmp_path / "run")
  match = re.search(
    r"step (\d+): loss \S+, gradient norm (nan|inf).*the last good checkpoint \(step (\d+)\)", str(error.value)
  )
  assert match, str(error.value)
  failed, kept = int(match.group(1)), int(match.group(3))
  assert kept == failed - 1 >= 1
  # The checkpoint left is the state of a run that stopped at that step of its own accord.
  good = sft_loop.train(config(kept), tmp_path / "good")
  manager = checkpointing.CheckpointManager(tmp_path / "run/checkpoints")
  assert manager.latest_step() == kept
  restored, _ = manager.restore(kept, good.state)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params), jax.device_get(good.state.params))


def test_a_rerun_with_other_settings_does_not_resume_checkpoints_it_did_not_make(tiny_with_tokenizer, tmp_path):
  train_file = _write_records(tmp_path / "demos.jsonl")
  sft_loop.train(_config(tiny_with_tokenizer, train_file, num_steps=2, save_every=2, export=False), tmp_path / "run")
  before = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
  changed = _config(tiny_with_tokenizer, train_file, num_steps=2, save_every=1)
  changed.optimizer.learning_rate = 3e-3
  with pytest.raises(ValueError, match=r"checkpoints of a run with other optimizer; resume with the same settings"):
    sft_loop.train(changed, tmp_path / "run")
  assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == before  # nothing lost
  other_data = tmp_path / "other.jsonl"
  other_data.write_text(train_file.read_text().replace("a", "b"))
  same_settings = _config(tiny_with_tokenizer, other_data, num_steps=2, save_every=1)
  with pytest.raises(ValueError, match=r"checkpoints of a run with other data"):
    sft_loop.train(same_settings, tmp_path / "run")
  # Settings that do not change what is trained (how often to save, export) may change.
  sft_loop.train(_config(tiny_with_tokenizer, train_file, num_steps=2, save_every=1, export=False), tmp_path / "run")


def test_checkpoints_made_before_a_setting_existed_resume_at_its_neutral_value(
  tiny_with_tokenizer, tmp_path, monkeypatch
):
  from srit_jax.data import fingerprint

  train_file = _write_records(tmp_path / "demos.jsonl")
  config = _config(tiny_with_tokenizer, train_file, num_steps=2, save_every=1, export=False)
  with monkeypatch.context() as patch:  # the run is made before `seed` existed: its inputs lack it
    patch.setitem(fingerprint.NEUTRAL_SETTINGS[""], "seed", config.seed)
    sft_loop.train(config, tmp_path / "run")
  saved = json.loads((tmp_path / "run" / "train_inputs.json").read_text())["settings"]
  assert "seed" not in saved and "learning_rate" in saved["optimizer"]
  with pytest.raises(ValueError, match=r"checkpoints of a run with other seed;"):  # were it not neutral
    sft_loop.train(config, tmp_path / "run")
  monkeypatch.setitem(fingerprint.NEUTRAL_SETTINGS[""], "seed", config.seed)
  last = sft_loop.train(config, tmp_path / "run")  # resumes its last checkpoint: nothing left to train
  assert last.state.step == 2


def test_a_truncated_newest_checkpoint_is_skipped_and_the_run_ends_as_an_uninterrupted_one(
  tiny_with_tokenizer, tmp_path, capsys
):
  train_file = _write_records(tmp_path / "demos.jsonl")
  config = _config(tiny_with_tokenizer, train_file, num_steps=6, save_every=2)
  full = sft_loop.train(config, tmp_path / "full")
  sft_loop.train(config, tmp_path / "run")
  # A run killed before its last save, whose newest checkpoint (step 4) was then damaged:
  # every data file of its state cut in half.
  shutil.rmtree(tmp_path / "run/checkpoints/6")
  damaged = [p for p in (tmp_path / "run/checkpoints/4/state").rglob("*") if p.is_file() and p.stat().st_size > 64]
  assert damaged
  for path in damaged:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  resumed = sft_loop.train(config, tmp_path / "run")
  out = capsys.readouterr().out
  assert "checkpoint 4 in" in out and "does not restore" in out and "moved to 4.damaged" in out
  assert "resumed from the checkpoint of step 2" in out
  assert (tmp_path / "run/checkpoints/4.damaged").is_dir()
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.state.params), jax.device_get(full.state.params))


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_parameters_bit_for_bit(tiny_with_tokenizer, tmp_path):
  train_file = _write_records(tmp_path / "demos.jsonl")
  base = [
    sys.executable,
    "-m",
    "srit_jax.cli",
    "sft",
    "--config=configs/sft.py:tiny",
    f"--config.model={tiny_with_tokenizer}",
    f"--config.train_file={train_file}",
    "--config.mesh.fsdp=1",
    "--config.num_steps=10",
  ]
  env = subprocess_env(1)
  subprocess.run([*base, f"--workdir={tmp_path / 'full'}"], check=True, env=env, capture_output=True, timeout=600)

  workdir = tmp_path / "killed"
  checkpoints = workdir / "checkpoints"
  moments = [
    ("during the first checkpoint save", lambda: checkpoint_being_saved(checkpoints)),
    ("after the checkpoint of step 4", lambda: (checkpoints / "4").exists()),
    (
      "between checkpoints",
      lambda: (workdir / "metrics.jsonl").exists() and len((workdir / "metrics.jsonl").read_text().splitlines()) >= 7,
    ),
  ]
  killed_at = kill_at_moments([*base, f"--workdir={workdir}"], moments, env=env)
  assert killed_at, "every run finished before it could be killed"
  subprocess.run([*base, f"--workdir={workdir}"], check=True, env=env, capture_output=True, timeout=600)
  full = load_file(str(tmp_path / "full/export/model.safetensors"))
  resumed = load_file(str(workdir / "export/model.safetensors"))
  assert full.keys() == resumed.keys()
  for name in full:
    np.testing.assert_array_equal(resumed[name], full[name], err_msg=name)
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 11)), "metrics of redone steps must replace, not repeat"
