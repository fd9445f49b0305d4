"""`srit-jax plan`: every jitted program a config will run, compiled ahead of time for its TPU
slice (or the local devices) without running anything, and checked against each chip's HBM.

    srit-jax plan --config=configs/paper.py:llama2_7b,v5e-8 --topology=v5e-8
    srit-jax plan --config=configs/sft.py --topology=v4-8 --command=sft

The programs and their measurement are srit_jax/planning/programs.py's; this prints them as a table
and exits non-zero when one does not fit, naming what would make it fit. Each program's figures
are kept in the compilation cache's `plan_figures/` (`--compilation_cache`), so a second plan of
the same program reads them instead of compiling it; `--compilation_cache=none` compiles all.
"""

from __future__ import annotations

import functools
import pathlib

from srit_jax.planning.fit import failures, plan_devices, report
from srit_jax.planning.programs import programs
from srit_jax.planning.run_time import estimate_report, run_estimate


def run(
  config,
  *,
  command: str = "pipeline",
  topology_name: str | None = None,
  prompt_length: int = 512,
  time: bool = True,
  figures_cache: pathlib.Path | None = None,
) -> int:
  """Prints the plan table (and with `time` each program's time bound and the run's hours);
  returns 0 when every program fits, 1 otherwise. `figures_cache`: see `compiled_figures.compile_figures`."""
  devices, hbm = plan_devices(topology_name)
  where = f"{topology_name} ({len(devices)} devices, {devices[0].device_kind})" if topology_name else "local devices"
  print(f"planning {command} for {where}; prompts of {prompt_length} tokens")
  plans = programs(
    config,
    command,
    devices,
    prompt_length=prompt_length,
    cost=time,
    figures_cache=figures_cache,
    progress=functools.partial(print, flush=True),
  )
  print(report(plans, hbm))
  times = estimate_report(run_estimate(config, plans, devices, hbm), len(devices)) if time else ""
  if times:
    print("\n" + times)
  problems = failures(plans, hbm, config, command)
  if problems:
    print("\ndoes not fit:\n" + "\n".join(f"  {p}" for p in problems))
    return 1
  print("\nevery program fits")
  return 0
