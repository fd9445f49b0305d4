"""Peak resident memory per phase: the kernel's high-water mark, reset at a phase's start."""

import pytest

from srit_jax import host_memory


def test_the_peak_counts_from_the_last_reset():
  host_memory.reset_peak()
  before = host_memory.peak_bytes()
  if before is None:
    pytest.skip("no /proc/self/status here (not Linux)")
  size = 256 * 2**20
  block = bytearray(size)
  block[::4096] = b"\1" * (size // 4096)  # touch every page, so that it is resident
  assert host_memory.peak_bytes() >= before + 200 * 2**20
  del block
  host_memory.trim()
  host_memory.reset_peak()  # a new phase: what the last one peaked at no longer counts
  assert host_memory.peak_bytes() < before + 100 * 2**20


def test_a_library_imported_frozen_is_left_out_of_later_collections():
  """What the first import made is frozen (and nothing on a later import); its objects still work."""
  import subprocess
  import sys

  script = (
    "import gc\n"
    "from srit_jax import host_memory\n"
    "before = gc.get_freeze_count()\n"
    "module = host_memory.import_frozen('email.mime.text')\n"
    "frozen = gc.get_freeze_count()\n"
    "host_memory.import_frozen('email.mime.text')\n"
    "assert module.MIMEText('x').get_payload() == 'x'\n"
    "print(before, frozen, gc.get_freeze_count())\n"
  )
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
  before, frozen, again = map(int, result.stdout.split())
  assert before == 0 and frozen > 1000 and again == frozen
