"""What the benchmarks share: the model they time, the devices' peak, timing, the PyTorch
baselines' model, and the JSON report.

Every benchmark takes these flags:
  --preset=NAME       a model preset (srit_jax.model.presets.PRESETS) with random weights
  --model=SOURCE      a real checkpoint instead (known name, HF directory, .gguf file)
  --dtype, --param_dtype, --remat, --attention   numerics and memory of ours
  --warmup, --repeats timing: median of `repeats` calls after `warmup` untimed ones
  --baseline=a,b      PyTorch baselines to time in the same run (each needs torch)
  --out=FILE          the figures as JSON
  --profile=DIR       a jax.profiler trace of one more call of ours (read it with trace_summary.py)
Ours runs on every local device of JAX's default backend (FSDP over them); the PyTorch
baselines on CUDA when it is there, else the CPU, on the same architecture and batch. Training
baselines run first and give their memory back before ours runs (JAX keeps what it allocated).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

PRESET = flags.DEFINE_string("preset", "smollm2-135m", "model preset with random weights")
MODEL = flags.DEFINE_string("model", None, "a real checkpoint to time instead of the preset")
DTYPE = flags.DEFINE_string("dtype", "float32", "compute dtype (float32 on CPU; bfloat16 on accelerators)")
PARAM_DTYPE = flags.DEFINE_string("param_dtype", "float32", "parameter (master weight) dtype")
REMAT = flags.DEFINE_string("remat", "none", "remat policy: none | full | dots | dots_no_batch")
ATTENTION = flags.DEFINE_string("attention", "auto", "attention kernel: auto | xla | splash | blockwise | cudnn")
WARMUP = flags.DEFINE_integer("warmup", 2, "untimed calls first")
REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls (the median is reported)")
BASELINES = flags.DEFINE_list("baseline", [], "PyTorch baselines to time beside ours")
OUT = flags.DEFINE_string("out", None, "write the figures as JSON here too")
PROFILE = flags.DEFINE_string("profile", None, "trace one more call of ours into this folder (perfetto_trace.json.gz)")

# HBM bandwidth per device, for the decode roofline.
HBM_BYTES_PER_S = {"NVIDIA H100": 3.35e12, "NVIDIA H200": 4.8e12, "NVIDIA A100": 2.0e12, "TPU v5 lite": 0.82e12}


@dataclasses.dataclass
class Model:
  config: object  # ModelConfig
  params: object
  mesh: object
  tokenizer: object = None  # a real checkpoint's


def baselines(known: tuple[str, ...]) -> list[str]:
  """The --baseline names, each checked against the ones this benchmark knows, before any work."""
  unknown = [name for name in BASELINES.value if name not in known]
  if unknown:
    raise app.UsageError(f"--baseline {','.join(unknown)}: this benchmark knows {', '.join(known)}")
  return list(BASELINES.value)


def model() -> Model:
  """The model to time, laid out over every local device (FSDP)."""
  import jax

  from srit_jax import sharding
  from srit_jax.conversion import loading
  from srit_jax.model import decoder, presets

  mesh = sharding.make_mesh(sharding.MeshConfig(1, -1, 1))
  numerics = dict(dtype=DTYPE.value, param_dtype=PARAM_DTYPE.value, remat_policy=REMAT.value, attention=ATTENTION.value)
  if MODEL.value:
    loaded = loading.load_model(MODEL.value, mesh=mesh, **numerics)
    return Model(loaded.config, loaded.params, mesh, loaded.tokenizer)
  config = presets.get_preset(PRESET.value, **numerics)
  return Model(config, decoder.init_params(config, jax.random.key(0), mesh), mesh)


def lora_config(config, rank: int):
  """The model config of a LoRA step: adapters on every projection, the base in the compute dtype."""
  return dataclasses.replace(config, lora_rank=rank, lora_alpha=2.0 * rank, base_dtype=config.dtype)


def initial_state(model: Model, config, tx):
  """(train state on the mesh, LoRA base or None): `config`'s adapters over the model's weights
  as the frozen base (`config.lora_rank`), or a copy of every weight, with fresh AdamW state."""
  import jax

  from srit_jax.model import decoder
  from srit_jax.training.state import create_train_state, state_shardings

  base = None
  if config.lora_rank:
    base = jax.tree.map(lambda x: x.astype(config.base_param_dtype), model.params)
    trained = decoder.init_adapters(config, jax.random.key(1), model.mesh)
  else:
    trained = jax.tree.map(lambda x: x.copy(), model.params)
  state = create_train_state(trained, tx)
  return jax.device_put(state, state_shardings(state, config, model.mesh)), base


def peak_flops() -> float:
  """Every local device's peak FLOP/s for the compute dtype (measured on CPU)."""
  from srit_jax.training import flops

  return flops.peak_flops(DTYPE.value)


def median_seconds(fn, *, warmup: int | None = None, repeats: int | None = None) -> float:
  """Median seconds of `fn()` (which must block until its work is done)."""
  for _ in range(WARMUP.value if warmup is None else warmup):
    fn()
  times = []
  for _ in range(REPEATS.value if repeats is None else repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def profile(fn) -> None:
  """One more call of `fn` under `jax.profiler.trace` when --profile is given (a folder per call)."""
  if not PROFILE.value:
    return
  import jax

  with jax.profiler.trace(PROFILE.value, create_perfetto_trace=True):
    fn()


def machine() -> dict:
  import jax

  device = jax.devices()[0]
  return {
    "host": platform.processor() or platform.machine(),
    "cpus": os.cpu_count(),
    "backend": jax.default_backend(),
    "devices": f"{jax.device_count()} x {device.device_kind}",
    "jax": jax.__version__,
    "dtype": DTYPE.value,
    "param_dtype": PARAM_DTYPE.value,
    "remat": REMAT.value,
    "model": MODEL.value or PRESET.value,
  }


def hbm_bandwidth() -> float | None:
  import jax

  kind = jax.devices()[0].device_kind
  return next((bw for name, bw in HBM_BYTES_PER_S.items() if kind.startswith(name)), None)


# --- PyTorch baselines --------------------------------------------------------------------------


def torch_device():
  import torch

  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_model(config):
  """A `transformers` model of the same architecture, random weights, on the baselines' device."""
  import torch
  import transformers

  from srit_jax.conversion import hf_config

  torch.set_num_threads(os.cpu_count() or 1)
  hf = transformers.AutoConfig.for_model(**hf_config.config_json(config))
  model = transformers.AutoModelForCausalLM.from_config(hf, attn_implementation="sdpa", dtype=torch.float32)
  return model.to(torch_device())


def torch_autocast():
  """bfloat16 autocast when our compute dtype is bfloat16 (the baselines' mixed precision)."""
  import contextlib

  import torch

  if DTYPE.value == "bfloat16":
    return torch.autocast(torch_device().type, dtype=torch.bfloat16)
  return contextlib.nullcontext()


def torch_sync():
  import torch

  if torch.cuda.is_available():
    torch.cuda.synchronize()


def torch_peak_memory() -> int | None:
  import torch

  return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def release_torch(figures: dict) -> dict:
  """After a baseline: its memory goes back to the device, for ours (which runs after it) to use."""
  import gc

  import torch

  gc.collect()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
  return figures


def report(results: dict) -> None:
  """Prints the figures as JSON, and writes them to --out when given."""
  text = json.dumps(results, indent=2)
  print(text)
  if OUT.value:
    pathlib.Path(OUT.value).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(OUT.value).write_text(text + "\n")
