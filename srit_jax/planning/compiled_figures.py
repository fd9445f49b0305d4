"""What a plan reads of a compiled program — per-device bytes of its arguments, temporaries and
outputs, and XLA's count of its FLOPs and bytes accessed — compiling it, or reading the figures
kept for it.

JAX's persistent compilation cache cannot load a program compiled for a slice it is not running
on, so with a `figures_cache` folder the figures of each compiled program are kept there
instead, by the lowered program's hash: a second plan of the same program (a rerun, a variant
planned again at other rows, a plan resumed after a kill) reads them without compiling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import time
from collections.abc import Callable

import jax

from srit_jax import host_memory, io


@dataclasses.dataclass(frozen=True)
class Cost:
  """FLOPs and HBM bytes of one call of a program, per device."""

  flops: float = 0.0
  bytes: float = 0.0

  def __add__(self, other: Cost) -> Cost:
    return Cost(self.flops + other.flops, self.bytes + other.bytes)

  def __sub__(self, other: Cost) -> Cost:
    return Cost(self.flops - other.flops, self.bytes - other.bytes)

  def __mul__(self, k: float) -> Cost:
    return Cost(self.flops * k, self.bytes * k)

  def seconds(self, peak_flops: float, bandwidth: float) -> float:
    """The roofline bound: no faster than its FLOPs at peak, nor than its bytes at full bandwidth."""
    return max(self.flops / peak_flops, self.bytes / bandwidth)


def xla_cost(compiled) -> Cost:
  """XLA's own count of a compiled program's FLOPs and bytes accessed, per device."""
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list | tuple) else cost) or {}
  return Cost(float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)))


_TEMPORARIES = re.compile(r"HLO temporaries \(([\d.]+)G\)")
_ALLOCATION = re.compile(r"Allocation \(size=(\d+)\) would exceed memory")  # older libtpu's report


@dataclasses.dataclass(frozen=True)
class Compiled:
  """What a plan reads of one compiled program, per device; `error`: why XLA refused it."""

  arguments: int = 0
  temporaries: int = 0  # for a program refused for lack of memory: what XLA's report says
  outputs: int = 0
  aliased: int = 0
  cost: Cost = Cost()  # XLA's count (a loop body once)
  seconds: float = 0.0  # the compile's wall time
  host_bytes: int = 0  # this process's resident memory at most while lowering and compiling (0: unknown)
  error: str = ""
  cached: bool = False


FIGURES_VERSION = 1  # raised whenever what `compile_figures` reads of a program changes

# The shallow copies compiled only for their cost are compiled with XLA's least effort on the
# program's speed: their FLOPs are the same and their bytes within a few percent (llama2_7b's SFT
# step on v5e-8 at depth 1 and 2: FLOPs equal to 6 digits, bytes +1.4% and +2.9%), the training
# steps' in an eighth of the time (that step's: 24 s and 30 s instead of 194 s and 240 s on a
# 2-core CPU; the samplers' copies take about 2 minutes either way; benchmarks/plan_cost_effort.py,
# figures in benchmarks/RESULTS.md). Memory is never read from them: every program's memory comes
# from its own compile at the default effort.
COST_ONLY_OPTIONS = {"exec_time_optimization_effort": -1.0}


def figures_cache_in(compilation_cache) -> pathlib.Path:
  """Where plans keep their figures: `plan_figures/` in the compilation cache's folder."""
  return io.as_path(compilation_cache) / "plan_figures"


def _libtpu_version() -> str:
  try:
    return importlib.metadata.version("libtpu")
  except importlib.metadata.PackageNotFoundError:
    return ""


def _figures_key(lowered, arguments, compiler_options: dict | None = None) -> str:
  """The program as lowered, the devices its arguments lie on, and whatever else changes what
  XLA makes of it: versions, XLA's flags, JAX's optimisation settings, the compile's options."""
  devices = set()
  for leaf in jax.tree.leaves(arguments):
    if getattr(leaf, "sharding", None) is not None:
      devices |= leaf.sharding.device_set
  settings = ("jax_disable_most_optimizations", "jax_exec_time_optimization_effort", "jax_memory_fitting_effort")
  parts = [
    f"figures {FIGURES_VERSION}",
    lowered.as_text(),
    *sorted(f"{d!r} {d.device_kind}" for d in devices),
    f"jax {jax.__version__} jaxlib {importlib.metadata.version('jaxlib')} libtpu {_libtpu_version()}",
    os.environ.get("XLA_FLAGS", ""),
    os.environ.get("LIBTPU_INIT_ARGS", ""),
    *(f"{name} {jax.config.values.get(name)}" for name in settings),
  ]
  if compiler_options:  # none: the key every earlier plan stored its figures under
    parts.append(f"options {sorted(compiler_options.items())}")
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _cached_figures(entry: pathlib.Path) -> Compiled | None:
  try:
    stored = json.loads(entry.read_text())
    return Compiled(**{**stored, "cost": Cost(**stored["cost"]), "cached": True})
  except (OSError, ValueError, KeyError, TypeError):  # absent, or not what this version writes
    return None


def compile_figures(
  lower, arguments, figures_cache: pathlib.Path | None = None, compiler_options: dict | None = None
) -> Compiled:
  """Compiles `lower()` (its `arguments` abstract) and reads its memory and XLA's cost; a program
  XLA refuses keeps the first line of the refusal and, when it is for lack of memory, the
  temporaries its report names. With `figures_cache`, figures already there for the same
  program are read instead of compiling, and new ones are kept (a refusal only for lack of
  memory: any other failure may not recur)."""
  start, entry = time.perf_counter(), None
  try:
    with host_memory.sampled_peak() as host:  # a paper-scale sampler's compile takes gigabytes of the host
      lowered = lower()
      if figures_cache is not None:
        entry = figures_cache / f"{_figures_key(lowered, arguments, compiler_options)}.json"
        if (cached := _cached_figures(entry)) is not None:
          return cached
      compiled = lowered.compile(compiler_options=compiler_options)
  except Exception as e:  # XLA refuses a program that cannot fit: its report is the finding
    text = str(e)
    found, allocation = _TEMPORARIES.search(text), _ALLOCATION.search(text)
    temporaries = int(float(found.group(1)) * 2**30) if found else int(allocation.group(1)) if allocation else 0
    figures = Compiled(
      temporaries=temporaries,
      seconds=time.perf_counter() - start,
      host_bytes=host.bytes or 0,
      error=text.strip().splitlines()[0][:400],
    )
    if not temporaries:
      return figures
  else:
    memory = compiled.memory_analysis()
    figures = Compiled(
      memory.argument_size_in_bytes,
      memory.temp_size_in_bytes,
      memory.output_size_in_bytes,
      memory.alias_size_in_bytes,
      xla_cost(compiled),
      time.perf_counter() - start,
      host.bytes or 0,
    )
  if entry is not None:
    stored = dataclasses.asdict(figures)
    del stored["cached"]
    io.write_json(entry, stored)
  return figures


@dataclasses.dataclass(frozen=True)
class Compiling:
  """How a plan compiles: with `cost`, two shallow copies more per program for its time bound;
  figures kept in and read from `figures_cache` (see `compile_figures`); `progress` told of each
  compile as it ends (a paper-scale program takes minutes)."""

  cost: bool = True
  figures_cache: pathlib.Path | None = None
  progress: Callable[[str], None] | None = None

  def figures(self, lower, arguments, what: str, compiler_options: dict | None = None) -> Compiled:
    figures = compile_figures(lower, arguments, self.figures_cache, compiler_options)
    if not figures.cached:
      # The compiler's freed working memory goes back to the system: glibc would keep it, and a
      # paper-scale plan then grew past 18 GB of a host over one variant's 15 compiles.
      host_memory.trim()
    if self.progress is not None:
      done = "figures read back" if figures.cached else f"compiled in {figures.seconds:.0f} s"
      if figures.host_bytes and not figures.cached:
        done += f", {figures.host_bytes / 1e9:.1f} GB of host memory at most"
      self.progress(f"  {what}: {done}{' (refused)' if figures.error else ''}")
    return figures
