"""Host memory, compile time and TPU temporaries of compiling a plan's refine sampler, with its
model cut to fewer layers: how a plan's largest compile grows with depth.

    for n in 2 4 8 16; do python benchmarks/sampler_compile_memory.py --variant=gemma2_9b,v4-8,qlora --layers=$n; done

One compile a process (the peak resident memory of the process is the compile's): the refine
sampler of a configs/paper.py variant, as `srit-jax plan` builds it (its rows, 512-token
prompts, its new tokens), compiled for the variant's TPU slice on this CPU host at the default
effort, without the cost copies. `--layers=0` keeps every layer. Nothing is cached.
"""

from __future__ import annotations

import json
import os
import resource
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from absl import app, flags

_VARIANT = flags.DEFINE_string("variant", "gemma2_9b,v4-8,qlora", "a configs/paper.py variant: STUDENT,SLICE[,METHOD]")
_LAYERS = flags.DEFINE_integer("layers", 0, "the model's first LAYERS layers (0: all of them)")
_PROMPT_LENGTH = flags.DEFINE_integer("prompt_length", 512, "prompt tokens, as `srit-jax plan --prompt_length`")


def main(argv):
  del argv
  from srit_jax import configs
  from srit_jax.planning import compiled_figures, cost_model, program_plan, programs, topology

  config = configs.load("paper", _VARIANT.value)
  devices, _ = topology.tpu_devices(_VARIANT.value.split(",")[1])
  full_depth = program_plan.block_model_config

  def cut(block, model_source, param_dtype=None):
    model_config = full_depth(block, model_source, param_dtype)
    return cost_model.shallow(model_config, _LAYERS.value or model_config.num_layers, unrolled=False)

  program_plan.block_model_config = cut
  block = config.refine
  start = time.perf_counter()
  plan = programs.sampler_program(
    "refine",
    block,
    config.student,
    devices,
    batch=block.generate_batch_size,
    prompt_length=_PROMPT_LENGTH.value,
    max_new_tokens=max(block.max_new_tokens, block.max_new_tokens_direct),
    how=compiled_figures.Compiling(cost=False),
  )
  row = {
    "variant": _VARIANT.value,
    "layers": _LAYERS.value or cut(block, config.student).num_layers,
    "program": plan.name,
    "compile_s": round(time.perf_counter() - start, 1),
    "peak_host_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,  # ru_maxrss: KiB on Linux
    "compile_host_gb": plan.compile_host_bytes / 1e9,  # what `srit-jax plan` prints: sampled over the compile
    "temporaries_gb": plan.temporaries / 1e9,
    "error": plan.error,
  }
  print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
