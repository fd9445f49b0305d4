"""Device time per kernel, read from the traces that a benchmark's `--profile=DIR` writes.

    python benchmarks/trace_summary.py /tmp/profile --top=30 --out=summary.json

Each `perfetto_trace.json.gz` under the folders given (one per profiled call) is read; the
kernels that ran on a device (on the CPU, the XLA ops of the host's compute threads) are
summed by name and by kind — matrix products, attention, fusions (XLA's element-wise and
reduction kernels), copies, communication — and the largest are printed with their share of
the device's busy time.
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re

from absl import app, flags

_TOP = flags.DEFINE_integer("top", 25, "kernels to list per trace")
_OUT = flags.DEFINE_string("out", None, "write the summaries as JSON here too")

KINDS = (  # the first pattern that matches a kernel's name gives its kind
  ("attention", re.compile(r"cudnn|fmha|flash|attention|sdpa|splash", re.I)),
  ("matmul", re.compile(r"gemm|cublas|cutlass|xmma|nvjet|sm90_|sm80_|dot|matmul|convolution", re.I)),
  ("communication", re.compile(r"nccl|all-reduce|all-gather|reduce-scatter|all_reduce|all_gather", re.I)),
  ("copy", re.compile(r"memcpy|memset|copy|transpose|dynamic.update.slice|dynamic.slice", re.I)),
  ("fusion", re.compile(r"fusion|reduce|loop_|input_|broadcast|convert|select|add|multiply", re.I)),
)


def kind_of(name: str) -> str:
  return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def device_events(events: list[dict]) -> list[dict]:
  """The complete ('X') events that ran on a device; on a CPU-only trace, the XLA threads' ops."""
  processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  device_pids = {pid for pid, name in processes.items() if "/device:" in name and "CPU" not in name}
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
  if device_pids:
    return [e for e in complete if e["pid"] in device_pids]
  threads = {
    (e["pid"], e.get("tid")): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
  }
  return [e for e in complete if "XLAEigen" in threads.get((e["pid"], e.get("tid")), "")]


def summarize(path: pathlib.Path, top: int) -> dict:
  with gzip.open(path) as file:
    data = json.loads(file.read())
  events = device_events(data["traceEvents"] if isinstance(data, dict) else data)
  by_name = collections.defaultdict(lambda: [0.0, 0])
  for event in events:
    entry = by_name[event["name"]]
    entry[0] += event["dur"]
    entry[1] += 1
  busy_us = sum(total for total, _ in by_name.values())
  by_kind = collections.Counter()
  for name, (total, _) in by_name.items():
    by_kind[kind_of(name)] += total
  ranked = sorted(by_name.items(), key=lambda item: -item[1][0])[:top]
  return {
    "trace": str(path),
    "busy_ms": busy_us / 1e3,
    "kinds_ms": {kind: total / 1e3 for kind, total in by_kind.most_common()},
    "kernels": [
      {"name": name, "kind": kind_of(name), "ms": total / 1e3, "calls": calls, "share": total / max(busy_us, 1e-9)}
      for name, (total, calls) in ranked
    ],
  }


def print_summary(summary: dict) -> None:
  print(f"\n{summary['trace']}: device busy {summary['busy_ms']:.2f} ms")
  print("  by kind: " + ", ".join(f"{kind} {ms:.2f} ms" for kind, ms in summary["kinds_ms"].items()))
  for kernel in summary["kernels"]:
    share = f"{kernel['ms']:9.3f} ms {100 * kernel['share']:5.1f}% x{kernel['calls']:<5d}"
    print(f"  {share} {kernel['kind']:<13s} {kernel['name'][:90]}")


def main(argv):
  folders = [pathlib.Path(a) for a in argv[1:]]
  if not folders:
    raise app.UsageError("give the folders that --profile wrote")
  summaries = [summarize(p, _TOP.value) for folder in folders for p in sorted(folder.rglob("perfetto_trace.json.gz"))]
  if not summaries:
    raise app.UsageError(f"no perfetto_trace.json.gz under {', '.join(map(str, folders))}")
  for summary in summaries:
    print_summary(summary)
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(summaries, indent=1) + "\n")


if __name__ == "__main__":
  app.run(main)
