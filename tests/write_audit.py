"""Runs the srit-jax command line while recording every file it opens for writing (or removes,
renames or creates) under a directory: a test's witness that a process wrote nothing there.

    python tests/write_audit.py LOG DIRECTORY sft --config=... --workdir=DIRECTORY/run

Python-level file operations only (audit hooks); native libraries that write on their own
(TensorStore under Orbax) are not seen.
"""

import os
import sys

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_CHANGES = {"os.remove", "os.rename", "os.replace", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"}


def main() -> None:
  log_path, root = sys.argv[1], os.path.realpath(sys.argv[2])
  log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (open for the process's life)

  def under_root(path) -> bool:
    try:
      return os.path.realpath(os.fsdecode(path)).startswith(root + os.sep)
    except (TypeError, ValueError):
      return False

  def hook(event, args):
    if event == "open" and args:
      path, mode, flags = [*args, None, None][:3]
      writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
        isinstance(flags, int) and flags & _WRITE_FLAGS
      )
      if writing and isinstance(path, str | bytes | os.PathLike) and under_root(path):
        log.write(f"open {os.fsdecode(path)}\n")
        log.flush()
    elif event in _CHANGES and args and under_root(args[0]):
      log.write(f"{event} {os.fsdecode(args[0])}\n")
      log.flush()

  sys.addaudithook(hook)
  from srit_jax import cli

  sys.argv = [sys.argv[0], *sys.argv[3:]]
  cli.run()


if __name__ == "__main__":
  main()
