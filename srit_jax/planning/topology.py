"""Cloud TPU slices by name, as devices a CPU host can compile for (libtpu's topology
description; nothing runs), and what each device holds.

    devices, hbm_bytes = topology.tpu_devices("v5e-8")    # or the raw "v5e:2x4"

Names are the slice names of `gcloud` (v4-8, v5e-16, v5p-8, v6e-8, ...); v4 and v5p chips run
as one device each (megacore), v5e and v6e have one core per chip. The HBM figures are what
XLA reports as available per device for programs (a little under the chip's HBM). Also the
settings a command makes before JAX starts its backends (libtpu on a host without chips,
emulated CPU devices); this module imports no JAX, so they cost nothing at start-up.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Slice:
  topology: str  # libtpu's name: "v5e:2x4"
  chip_config: str  # "megacore" (v4, v5p: two cores as one device) or "default"
  hosts: int
  hbm_bytes: int  # per device, as XLA reports it available
  devices: int = 0  # JAX devices (chips) of the slice


# HBM available to a program per device, by device kind (XLA's "available HBM" in its
# out-of-memory reports: v4 megacore 30.75 GiB, v5e 15.75, v5p 95.74, v6e 31.25).
HBM_BY_KIND = {"TPU v4": 30.75 * GIB, "TPU v5 lite": 15.75 * GIB, "TPU v5": 95.74 * GIB, "TPU v6 lite": 31.25 * GIB}

# Peak dense bfloat16 FLOP/s and HBM bytes/s per device (a chip; v4 and v5p as one megacore
# device), from Google's published figures: what a roofline bound divides by.
PEAKS_BY_KIND = {
  "TPU v4": (275e12, 1.2e12),
  "TPU v5 lite": (197e12, 0.819e12),
  "TPU v5": (459e12, 2.765e12),
  "TPU v6 lite": (918e12, 1.64e12),
}

SLICES = {
  "v4-8": Slice("v4:2x2x1", "megacore", 1, int(HBM_BY_KIND["TPU v4"]), 4),
  "v4-16": Slice("v4:2x2x2", "megacore", 2, int(HBM_BY_KIND["TPU v4"]), 8),
  "v4-32": Slice("v4:2x2x4", "megacore", 4, int(HBM_BY_KIND["TPU v4"]), 16),
  "v5e-8": Slice("v5e:2x4", "default", 1, int(HBM_BY_KIND["TPU v5 lite"]), 8),
  "v5e-16": Slice("v5e:4x4", "default", 4, int(HBM_BY_KIND["TPU v5 lite"]), 16),
  "v5e-32": Slice("v5e:4x8", "default", 8, int(HBM_BY_KIND["TPU v5 lite"]), 32),
  "v5p-8": Slice("v5:2x2x1", "megacore", 1, int(HBM_BY_KIND["TPU v5"]), 4),
  "v6e-8": Slice("v6e:2x4", "default", 1, int(HBM_BY_KIND["TPU v6 lite"]), 8),
}
_RAW = re.compile(r"^(v4|v5e|v5|v5p|v6e):\d+(x\d+){1,2}$")


class TopologyError(ValueError):
  """A topology name that is not a known slice or a libtpu topology."""


def resolve(name: str) -> Slice:
  """The slice `name` (a slice name or a raw "v5e:2x4" topology)."""
  if name in SLICES:
    return SLICES[name]
  if _RAW.match(name):
    generation = name.split(":")[0].replace("v5p", "v5")
    kind = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5": "TPU v5", "v6e": "TPU v6 lite"}[generation]
    megacore = generation in ("v4", "v5")
    return Slice(name.replace("v5p:", "v5:"), "megacore" if megacore else "default", 1, int(HBM_BY_KIND[kind]))
  raise TopologyError(
    f"unknown topology {name!r}; slices: {', '.join(SLICES)}, or a raw topology such as v5e:2x4 or v4:2x2x2"
  )


def has_tpu_chips() -> bool:
  """Whether this host has TPU chips (their device files), as a TPU VM does."""
  return any(pathlib.Path("/dev").glob("accel*")) or pathlib.Path("/dev/vfio").is_dir()


def quiet_libtpu_without_chips() -> None:
  """On a host without TPU chips, libtpu (the tpu extra, here to compile for slices) starts by
  looking for the VM's accelerator type and workers, and prints five lines of errors that read
  like a failure; naming them (a one-host v5e, this host) stops that. Without chips, libtpu's
  lockfile (one process per host's chips) guards nothing: several processes may compile for
  slices at once. A TPU VM is left alone."""
  if not has_tpu_chips():
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def single_threaded_ops_on_emulated_devices() -> None:
  """Before JAX starts its backends: with several emulated CPU devices
  (--xla_force_host_platform_device_count), each device runs its programs in a thread of its
  own, and XLA:CPU also splits single ops over one shared pool, where a collective's
  participants can wedge it for good (jax 0.10.2: a data-parallel SFT step over 8 emulated
  devices, loaded from the compilation cache, hung at its second step on every try, and ran 30
  steps with this). Ops then run in their device's thread, unless XLA_FLAGS says otherwise."""
  given = os.environ.get("XLA_FLAGS", "")
  devices = re.search(r"--xla_force_host_platform_device_count=(\d+)", given)
  if devices and int(devices.group(1)) > 1 and "xla_cpu_multi_thread_eigen" not in given:
    os.environ["XLA_FLAGS"] = f"{given} --xla_cpu_multi_thread_eigen=false".strip()


def tpu_devices(name: str):
  """(devices, HBM bytes per device) of slice `name`, compile-only (libtpu on any host)."""
  spec = resolve(name)
  quiet_libtpu_without_chips()
  try:
    from jax.experimental import topologies
  except ImportError as e:  # pragma: no cover - jax always has it
    raise TopologyError(f"this JAX cannot describe TPU topologies: {e}") from None
  try:
    description = topologies.get_topology_desc(
      platform="tpu",
      topology_name=spec.topology,
      chip_config_name=spec.chip_config,
      chips_per_host_bounds=(2, 2, 1),
      num_slices=1,
      wrap=(False, False, False),
    )
  except Exception as e:  # libtpu missing, or a topology it does not know
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    hint = "" if "lockfile" in reason else "; the TPU compiler comes with the tpu extra: pip install 'srit_jax[tpu]'"
    raise TopologyError(f"cannot describe TPU topology {spec.topology} ({reason}){hint}") from None
  return list(description.devices), spec.hbm_bytes


def peaks(device) -> tuple[float, float]:
  """(peak bfloat16 FLOP/s, HBM bytes/s) of a TPU device's kind; (NaN, NaN) when unknown."""
  for kind, values in sorted(PEAKS_BY_KIND.items(), key=lambda kv: -len(kv[0])):
    if device.device_kind.startswith(kind):
      return values
  return float("nan"), float("nan")


def hbm_bytes(device) -> float:
  """HBM available per device of a device's kind (NaN when unknown)."""
  for kind, size in sorted(HBM_BY_KIND.items(), key=lambda kv: -len(kv[0])):
    if device.device_kind.startswith(kind):
      return size
  return float("nan")
