"""Helpers shared by the benchmarks: timing and a description of the machine.

Model FLOPs and the in-run matmul peak live in `srit_jax.flops`.
"""

from __future__ import annotations

import json
import pathlib
import platform
import statistics
import time

import jax


def time_call(fn, repeats: int) -> list[float]:
  """Seconds per call of `fn` (which must block until its result is ready)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def median(values):
  return statistics.median(values)


def machine() -> str:
  device = jax.devices()[0]
  return (
    f"{platform.processor() or platform.machine()}, {jax.device_count()} x {device.device_kind}, jax {jax.__version__}"
  )


def report(results: dict, out: str | None) -> None:
  """Prints the figures as JSON, and writes them to `out` when given."""
  print(json.dumps(results, indent=2))
  if out:
    pathlib.Path(out).write_text(json.dumps(results, indent=2) + "\n")
