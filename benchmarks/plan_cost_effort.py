"""Compile time and XLA's cost of a plan's cost copies at the default effort and at
`compiled_figures.COST_ONLY_OPTIONS`: the check behind compiling those copies at XLA's least effort.

    python benchmarks/plan_cost_effort.py --variant=llama2_7b,v5e-8 --depths=1,2

For a configs/paper.py variant, its SFT step's shallow copy (`cost_model.shallow`, whole rows, as
`extrapolated_cost` compiles it) is compiled for the variant's TPU slice on this CPU host, once
with the least-effort options and once at the default effort, at each depth: compile seconds,
FLOPs, bytes accessed and temporaries of each. Nothing is cached.
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from absl import app, flags

_VARIANT = flags.DEFINE_string("variant", "llama2_7b,v5e-8", "a configs/paper.py variant: STUDENT,SLICE[,METHOD]")
_DEPTHS = flags.DEFINE_list("depths", ["1", "2"], "depths of the shallow copies")
_OUT = flags.DEFINE_string("out", None, "write the figures as JSON here too")


def main(argv):
  del argv
  from srit_jax import configs
  from srit_jax.planning import compiled_figures, cost_model, program_plan, topology, training_programs

  config = configs.load("paper", _VARIANT.value)
  devices, _ = topology.tpu_devices(_VARIANT.value.split(",")[1])
  model_config = program_plan.block_model_config(config.sft, config.student)
  build = training_programs.sft_build(config.sft, devices)
  figures = {}
  for depth in map(int, _DEPTHS.value):
    lower, _ = build(cost_model.shallow(model_config, depth), whole_rows=True)
    for effort, options in (("least", compiled_figures.COST_ONLY_OPTIONS), ("default", None)):
      start = time.perf_counter()
      compiled = lower().compile(compiler_options=options)
      cost = compiled_figures.xla_cost(compiled)
      figures[f"depth {depth}, {effort} effort"] = row = {
        "compile_s": time.perf_counter() - start,
        "flops": cost.flops,
        "bytes": cost.bytes,
        "temporaries": compiled.memory_analysis().temp_size_in_bytes,
      }
      print(f"depth {depth}, {effort} effort: {json.dumps(row)}", flush=True)
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"variant": _VARIANT.value, "figures": figures}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
