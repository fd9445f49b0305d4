"""What a failed checkpoint save leaves behind, kept out of a run's output.

A save that fails is reported by the run in one line (`checkpointing.check`). Without this,
Orbax's background save threads log the same error with its traceback (hundreds of lines), and
what is left of the save raises it again as the process goes on: the command line quiets those
copies unless `--traceback` is given. Imports nothing heavy: every command calls it.
"""

from __future__ import annotations

import logging as python_logging
import os
import sys
import threading
import traceback

SAVE_LIBRARIES = ("orbax", "tensorstore", "etils")  # whose coroutines a failed checkpoint save leaves behind


def quiet_leftovers() -> None:
  """Errors of Orbax's background save threads are logged with their tracebacks (hundreds of
  lines) and raised again in the run, which reports them in one line: without --traceback the
  logged copies are left out."""

  def from_a_save_thread(record) -> bool:
    return not (record.levelno >= python_logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)

  python_logging.getLogger("absl").addFilter(from_a_save_thread)
  # After the run has reported a failed save, what is left of the save raises its error again:
  # TensorStore's callbacks of its writes as they land on its closed loop ("Event loop is
  # closed"), its unfinished write coroutines as Python collects them (the unraisable hook), its
  # tasks whose error no one retrieved (asyncio's logger) and its threads (threading's hook).
  in_a_save_library = lambda filename: any(f"{os.sep}{library}{os.sep}" in filename for library in SAVE_LIBRARIES)

  def leftover_of_a_failed_save(error, code=None) -> bool:
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return True
    if code is not None and in_a_save_library(code.co_filename):
      return True
    if any(in_a_save_library(frame.filename) for frame in traceback.extract_tb(error.__traceback__)):
      return True
    return "OCDBT database" in str(error)  # TensorStore's words for a checkpoint's failed write

  default_unraisable, default_thread_hook = sys.unraisablehook, threading.excepthook

  def quiet_unraisable(unraisable):
    if not leftover_of_a_failed_save(unraisable.exc_value, getattr(unraisable.object, "cr_code", None)):
      default_unraisable(unraisable)

  def quiet_thread_error(failure):
    if not leftover_of_a_failed_save(failure.exc_value):
      default_thread_hook(failure)

  def not_a_leftover_task_error(record) -> bool:
    return not (record.exc_info and leftover_of_a_failed_save(record.exc_info[1]))

  sys.unraisablehook = quiet_unraisable
  threading.excepthook = quiet_thread_error
  python_logging.getLogger("asyncio").addFilter(not_a_leftover_task_error)
