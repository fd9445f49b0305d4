"""The command line: help that lists commands and config fields, one-line errors for bad flags,
and one live run per workdir."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from conftest import subprocess_env

from srit_jax import cli

ROOT = pathlib.Path(__file__).parents[1]


def _cli(*args, timeout=120):
  return subprocess.run(
    [sys.executable, "-m", "srit_jax.cli", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )


def test_help_lists_every_command_and_exits_0():
  result = _cli("--help")
  assert result.returncode == 0, result.stderr
  for name, command in cli.COMMANDS.items():
    assert f"  {name}" in result.stdout and command.summary in result.stdout
  assert "srit-jax COMMAND --help" in result.stdout


def test_command_help_shows_its_flags_and_config_fields_with_comments_and_defaults():
  result = _cli("sft", "--help")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert out.startswith("usage: srit-jax sft --config=configs/sft.py[:VARIANT] --workdir=DIR")
  assert "--config " in out and "--workdir " in out and "--distributed" in out
  assert "variants: (default), tiny" in out
  lines = {line.split(" = ")[0].strip(): line for line in out.splitlines() if " = " in line}
  assert "512" in lines["max_length"] and "positions per row" in lines["max_length"]
  assert "2e-05" in lines["optimizer.learning_rate"] and "peak learning rate" in lines["optimizer.learning_rate"]
  assert "mesh axis sizes" in lines["mesh.fsdp"]


def test_help_command_is_the_commands_own_help():
  result = _cli("help", "refine")
  assert result.returncode == 0, result.stderr
  assert result.stdout == _cli("refine", "--help").stdout
  assert result.stdout.startswith("usage: srit-jax refine") and "dpop_lambda" in result.stdout
  unknown = _cli("help", "nosuch")
  assert unknown.returncode == 2 and "unknown command 'nosuch'" in unknown.stderr


def test_help_of_a_pipeline_config_shows_its_phase_blocks(tmp_path):
  result = _cli("pipeline", "--help", "--config=configs/paper.py:mistral_7b,v5e-8")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("usage: srit-jax pipeline --config=configs/paper.py")
  assert "student,slice" not in result.stdout or "variants:" in result.stdout
  lines = {line.split(" = ")[0].strip(): line for line in result.stdout.splitlines() if " = " in line}
  assert "'mistralai/Mistral-7B-v0.1'" in lines["student"]
  assert "the one place beta lives" in lines["refine.beta"]  # comments come from the phase's own config file
  assert "teacher answers per question" in lines["demos.num_samples"]


@pytest.mark.parametrize(
  "args,message",
  [
    (
      ["sft", "--config=configs/sft.py", "--config.batch_siz=3", "--workdir=W"],
      "--config.batch_siz: the config has no field 'batch_siz'; did you mean batch_size?",
    ),
    (["sft", "--config=configs/sft.py", "--config.batch_size=abc", "--workdir=W"], "--config.batch_size=abc"),
    (
      ["sft", "--config=configs/sft.py:bogus", "--workdir=W"],
      "configs/sft.py: unknown variant 'bogus'; variants: '' (the default), 'tiny'",
    ),
    (["sft", "--config=configs/nope.py", "--workdir=W"], "No such file or directory: 'configs/nope.py'"),
    (["sft", "--config=configs/sft.py"], "sft needs --workdir=DIR"),
    (["eval", "--workdir=W"], "eval needs --config (for example configs/eval.py)"),
    (["generate", "--config=configs/generate.py"], "generate needs --out=FILE.jsonl"),
    (["bogus"], "unknown command 'bogus'"),
  ],
)  # fmt: skip
def test_command_line_mistakes_are_one_line_errors(args, message, tmp_path):
  start = time.perf_counter()
  result = _cli(*[a.replace("=W", f"={tmp_path / 'w'}") for a in args])
  assert time.perf_counter() - start < 10
  assert result.returncode == 2, result.stderr
  assert message in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "w").exists()


def test_a_phase_seed_the_pipeline_would_override_is_an_error(tmp_path):
  result = _cli("pipeline", "--config=configs/demo.py", "--config.refine.seed=1", f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert "refine.seed = 1: the pipeline sets it to seed (0); for another draw" in result.stderr
  assert "refine.sampling_seed" in result.stderr and not (tmp_path / "w").exists()  # no empty workdir left


def test_a_workdir_the_lock_made_goes_with_it_when_nothing_was_written(tmp_path):
  from srit_jax.phases import workdir_lock

  with workdir_lock.hold(tmp_path / "new" / "run"):
    assert (tmp_path / "new" / "run" / workdir_lock.LOCK_NAME).exists()
  assert not (tmp_path / "new" / "run").exists() and (tmp_path / "new").exists()  # only the workdir itself
  with workdir_lock.hold(tmp_path / "kept"):
    (tmp_path / "kept" / "results.json").write_text("{}")
  assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["results.json"]
  with workdir_lock.hold(tmp_path / "kept"):  # there before: stays even when left empty
    (tmp_path / "kept" / "results.json").unlink()
  assert (tmp_path / "kept").is_dir()


def _records(path: pathlib.Path, n=16) -> pathlib.Path:
  rows = [{"instruction": f"Add {i} and {i + 1}.", "output": f"{i} + {i + 1} = {2 * i + 1}."} for i in range(n)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


@pytest.mark.slow
def test_a_second_run_on_a_live_workdir_stops_at_once_and_the_first_is_unaffected(tiny_with_tokenizer, tmp_path):
  train_file = _records(tmp_path / "demos.jsonl")
  workdir = tmp_path / "run"
  args = [
    "sft",
    "--config=configs/sft.py:tiny",
    f"--config.model={tiny_with_tokenizer}",
    f"--config.train_file={train_file}",
    "--config.num_steps=12",
    "--config.save_every=4",
    "--config.mesh.fsdp=1",
    f"--workdir={workdir}",
  ]
  env = subprocess_env(1)
  first = subprocess.Popen(
    [sys.executable, "-m", "srit_jax.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
  )
  lock = workdir / ".srit_jax.lock"
  deadline = time.time() + 60
  while not lock.exists() and first.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  assert lock.exists(), "the first run never took the lock"
  start = time.perf_counter()
  second = subprocess.run(
    [sys.executable, "-m", "srit_jax.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True
  )
  elapsed = time.perf_counter() - start
  assert second.returncode == 1
  assert f"{workdir}: in use by pid {first.pid} on host" in second.stderr
  assert elapsed < 1.0, f"the second run took {elapsed:.2f} s to stop"
  _, err = first.communicate(timeout=300)
  assert first.returncode == 0, err.decode()[-2000:]
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 13))
  assert not lock.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  from srit_jax.phases import workdir_lock

  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  lock = tmp_path / workdir_lock.LOCK_NAME
  lock.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": int(dead.stdout), "since": "then"}))
  with workdir_lock.hold(tmp_path):
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with (
      pytest.raises(workdir_lock.WorkdirLockedError, match=f"in use by pid {os.getpid()}"),
      workdir_lock.hold(tmp_path),
    ):
      pytest.fail("a second holder got the lock of a live one")
  assert not lock.exists()


def test_commands_load_tokenizers_without_pytorch_and_encode_as_with_it(smollm2_dir, tiny_with_tokenizer):
  """The console script hides PyTorch (transformers would import it to load a tokenizer): the
  tokenizers it loads are the same classes and give the same ids as with PyTorch imported."""
  pytest.importorskip("torch")
  probe = (
    "import json, pathlib, sys\n"
    "from srit_jax import cli\n"
    "from srit_jax.conversion import loading\n"
    "if sys.argv[1] == 'hidden':\n"
    "  cli._without_pytorch()\n"
    "else:\n"
    "  import torch\n"
    "found = {}\n"
    "for directory in sys.argv[2:]:\n"
    "  tokenizer = loading._tokenizer_in(pathlib.Path(directory))\n"
    "  chat = [{'role': 'user', 'content': 'What is 12 + 30? Answer: 42.'}]\n"
    "  text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)\n"
    "  found[directory] = [type(tokenizer).__name__, text, tokenizer(text)['input_ids']]\n"
    "print(json.dumps({'torch': sys.modules.get('torch') is not None, 'tokenizers': found}))\n"
  )

  def load(mode):
    result = subprocess.run(
      [sys.executable, "-c", probe, mode, str(smollm2_dir), str(tiny_with_tokenizer)],
      capture_output=True, text=True, timeout=300, env=subprocess_env(1),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout.splitlines()[-1]), stderr=result.stderr)

  hidden, imported = load("hidden"), load("imported")
  assert not hidden["torch"] and imported["torch"]
  assert hidden["tokenizers"] == imported["tokenizers"]
  assert all(len(ids) > 5 for _, _, ids in hidden["tokenizers"].values())
  assert "PyTorch" not in hidden["stderr"], hidden["stderr"]
