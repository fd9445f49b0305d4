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
