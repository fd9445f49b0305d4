"""Peak resident memory and wall time of the README's main job (the demo pipeline), per phase.

    python benchmarks/demo_memory.py --out=benchmarks/results/demo_memory_cpu.json
    python benchmarks/demo_memory.py -- --config.refine.pair_packing=none   # overrides go to the pipeline

Runs `srit-jax pipeline --config=configs/demo.py` in a fresh workdir as its own process and
reports its wall time, each phase's own peak resident memory (the kernel's high-water mark,
which each phase resets at its start, after the phases before it gave back what they held:
results.json) and the largest of them. The model is fetched beforehand so the download is
not timed.
"""

from __future__ import annotations

import json
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = pathlib.Path(__file__).parents[1]
_OUT = flags.DEFINE_string("out", None, "write the figures as JSON here too")
_WORKDIR = flags.DEFINE_string("workdir", None, "the pipeline's workdir (default: a new temporary one)")


def main(argv):
  overrides = argv[1:]
  subprocess.run([sys.executable, "-m", "srit_jax.cli", "fetch-model", "smollm2-135m-instruct"], check=True)
  workdir = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="demo_memory_")) / "run"
  command = [sys.executable, "-m", "srit_jax.cli", "pipeline", "--config=configs/demo.py", f"--workdir={workdir}"]
  start = time.perf_counter()
  subprocess.run([*command, *overrides], check=True, cwd=ROOT)
  seconds = time.perf_counter() - start
  results = json.loads((workdir / "results.json").read_text())
  # Each phase resets the kernel's high-water mark, so the child's own peak is its last phase's.
  peak = max([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, *results["peak_rss_bytes"].values()])
  figures = {
    "command": " ".join([*command[2:], *overrides]),
    "wall_seconds": seconds,
    "peak_rss_bytes": peak,
    "phase_peak_rss_bytes": results["peak_rss_bytes"],
    "srit_vs_sft": {task: c["srit_vs_sft"]["difference"] for task, c in results["paired"].items()},
  }
  text = json.dumps(figures, indent=2)
  print(text)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(text + "\n")


if __name__ == "__main__":
  app.run(main)
