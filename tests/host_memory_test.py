"""Peak resident memory per phase (the kernel's high-water mark, reset at a phase's start) and
within a phase (sampled beside a block, leaving the phase's mark as it was)."""

import time

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


def test_a_sampled_peak_sees_memory_held_in_the_block_and_leaves_the_high_water_mark():
  if host_memory.resident_bytes() is None or host_memory.peak_bytes() is None:
    pytest.skip("no /proc/self here (not Linux)")
  size = 256 * 2**20
  host_memory.trim()
  host_memory.reset_peak()
  start = host_memory.resident_bytes()
  with host_memory.sampled_peak(interval_s=0.01) as sample:
    block = bytearray(size)
    block[::4096] = b"\1" * (size // 4096)
    time.sleep(0.1)  # held for several intervals
    del block
    host_memory.trim()
  assert sample.bytes >= start + 200 * 2**20
  assert host_memory.resident_bytes() < start + 100 * 2**20  # given back before the block ended
  assert host_memory.peak_bytes() >= start + 200 * 2**20  # the phase's own peak still holds it
  with host_memory.sampled_peak() as quiet:  # nothing held: the peak is what is resident already
    resident = host_memory.resident_bytes()
  assert quiet.bytes is not None and resident - 50 * 2**20 <= quiet.bytes < start + 100 * 2**20
