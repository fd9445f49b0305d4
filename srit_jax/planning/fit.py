"""Whether a config's programs fit a chip's HBM: the plan's table, the programs that do not fit
with the settings that would make them fit, and the check `sft`, `refine` and `pipeline` run
before any work on a TPU (`check_fits`). The programs and their figures are
srit_jax/planning/programs.py's."""

from __future__ import annotations

import os

import jax

from srit_jax.planning import topology
from srit_jax.planning.program_plan import ProgramPlan
from srit_jax.planning.programs import programs

GB = 1e9


class PlanError(ValueError):
  """Programs that do not fit their devices; the message names each and what would fit."""


def suggestions(plan: ProgramPlan, hbm: float, block) -> list[str]:
  """Settings that would make a program fit (estimates from its parts)."""
  if plan.error and not plan.temporaries:
    return ["see XLA's report above"]
  tips = []
  room = hbm - plan.arguments - plan.outputs + plan.aliased
  if room <= 0:
    return [
      f"its arguments alone (parameters, optimizer state, reference) need {plan.arguments / GB:.1f} GB per chip: "
      "a slice with more chips, or parameter-efficient tuning (lora.rank=8, with lora.base_quantization=int8 or nf4)"
    ]
  factor = plan.temporaries / room
  if plan.name.startswith(("SFT step", "DPO step")):
    micro = block.num_microbatches
    for k in (2, 4, 8, 16, 32, 64):
      candidate = micro * k
      if block.batch_size % candidate == 0 and k >= factor:
        tips.append(f"num_microbatches={candidate} (temporaries scale with the microbatch)")
        break
    if block.get("remat_policy", "none") in ("none", "dots", "dots_no_batch"):
      tips.append("remat_policy=full (recompute each layer in the backward pass)")
    tips.append(f"batch_size={max(1, int(block.batch_size / max(factor, 1.0) / 2))} or lower")
  elif "sampler" in plan.name:
    batch = "generate_batch_size" if plan.phase == "refine" else "batch_size"
    tips.append(f"a smaller {batch}, or shorter prompts / max_new_tokens")
  else:  # a forward pass over a batch: the reference log-probs, SFT's held-out loss
    tips.append(f"batch_size={max(1, int(block.batch_size / max(factor, 1.0) / 2))} or lower")
    tips.append(f"chunk_size={max(1, block.chunk_size // 2)} (positions of logits at a time)")
  return tips


def _gb(size: float) -> str:
  return f"{size / GB:.2f}" if size >= 0.01 * GB else f"{size / GB:.2g}"


def report(plans: list[ProgramPlan], hbm: float) -> str:
  lines = [
    f"per chip, HBM {hbm / GB:.2f} GB",
    "",
    "| phase | program | attention | arguments | temporaries | outputs | aliased | total | fits | XLA TFLOP | "
    "model TFLOP | compile s | compile host GB |",
    "|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
  ]
  for p in plans:
    if p.error and not p.temporaries:
      fits = "no (compile failed)"
      sizes = "| – | – | – | – | – "
    else:
      fits = "yes" if p.total <= hbm else f"no (+{(p.total - hbm) / GB:.2f} GB)"
      sizes = "".join(f"| {_gb(x)} " for x in (p.arguments, p.temporaries, p.outputs, p.aliased, p.total))
    lines.append(
      f"| {p.phase} | {p.name} | {p.attention} {sizes}| {fits} | {p.compiled_flops / 1e12:.3g} "
      f"| {p.model_flops / 1e12:.3g} | {p.compile_seconds:.1f}{' (cached)' if p.cached else ''} "
      f"| {f'{p.compile_host_bytes / GB:.1f}' if p.compile_host_bytes else '–'} |"
    )
  largest = max(plans, key=lambda p: p.compile_host_bytes, default=None)
  if largest is not None and largest.compile_host_bytes:
    lines += [
      "",
      f"host memory: the largest compile, {largest.phase} {largest.name}, held "
      f"{largest.compile_host_bytes / GB:.1f} GB at its peak (this process's resident memory while it compiled)",
    ]
  return "\n".join(lines)


def failures(plans: list[ProgramPlan], hbm: float, config, command: str) -> list[str]:
  """One line per program that does not fit: its shortfall and what would make it fit."""
  out = []
  for p in plans:
    if not p.fits(hbm):
      block = config[p.phase] if "student" in config else config
      shortfall = f"needs {p.total / GB:.2f} GB of {hbm / GB:.2f} GB" if p.temporaries else p.error
      out.append(f"{p.phase} {p.name}: {shortfall}; would fit with: {'; '.join(suggestions(p, hbm, block))}")
  return out


def plan_devices(topology_name: str | None):
  """(devices, HBM per device): a TPU slice's compile-only devices, or the local devices."""
  if topology_name:
    return topology.tpu_devices(topology_name)
  devices = jax.devices()
  hbm = topology.hbm_bytes(devices[0]) if devices[0].platform == "tpu" else _local_memory(devices[0])
  return devices, hbm


def _local_memory(device) -> float:
  try:
    return float(device.memory_stats()["bytes_limit"])
  except Exception:  # CPU devices report no limit: the host's memory, shared by its devices
    pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return pages * size / max(1, jax.local_device_count())


def check_fits(config, command: str, *, prompt_length: int = 512) -> None:
  """Raises PlanError when a program of `command` cannot fit the local TPU devices (nothing
  runs; on other platforms this does nothing)."""
  if jax.default_backend() != "tpu":
    return
  devices, hbm = plan_devices(None)
  plans = programs(config, command, devices, prompt_length=prompt_length, cost=False)  # memory only
  problems = failures(plans, hbm, config, command)
  if problems:
    raise PlanError("programs that do not fit this slice:\n" + "\n".join(problems) + "\n\n" + report(plans, hbm))
