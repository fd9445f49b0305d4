"""The reference pass kept batch by batch: what a rerun takes of a preempted pass, and what not
(the whole pass through `refine.run`, killed and resumed, is in tests/refine_test.py)."""

import numpy as np
import pytest

from srit_jax import preemption
from srit_jax.training import pair_scoring


def test_kept_reference_batches_of_other_pairs_or_another_batch_size_are_not_taken(tmp_path, monkeypatch):
  class Scorer:  # log-prob sums of 10 pairs in batches of 4: pair i scores (-i, -2i)
    pairs, batch_size = list(range(10)), 4

    def __init__(self):
      self.scored = []

    def __call__(self, params, base=None, *, desc=None, done=((), ()), on_batch=None):
      chosen, rejected = list(done[0]), list(done[1])
      for start in range(len(chosen), len(self.pairs), self.batch_size):
        batch = self.pairs[start : start + self.batch_size]
        self.scored += batch
        chosen += [-float(i) for i in batch]
        rejected += [-2.0 * i for i in batch]
        on_batch(np.asarray(chosen), np.asarray(rejected))
      return np.asarray(chosen), np.asarray(rejected)

  path, kept = tmp_path / "reference_logps.npz", tmp_path / "reference_logps.so_far.npz"
  monkeypatch.setattr(preemption, "requested", lambda: True)  # a notice after the first batch
  with pytest.raises(preemption.Preempted, match="the log-probs of 4 of 10 pairs"):
    pair_scoring.cached_log_probs(path, "pairs A", Scorer(), None, None)
  monkeypatch.setattr(preemption, "requested", lambda: False)
  other_pairs = Scorer()
  pair_scoring.cached_log_probs(path, "pairs B", other_pairs, None, None)
  assert other_pairs.scored == list(range(10))  # pairs A's batch was not taken for pairs B's
  assert not kept.exists() and path.exists()

  path.unlink()
  monkeypatch.setattr(preemption, "requested", lambda: True)
  with pytest.raises(preemption.Preempted):
    pair_scoring.cached_log_probs(path, "pairs A", Scorer(), None, None)
  monkeypatch.setattr(preemption, "requested", lambda: False)
  other_batches = Scorer()
  other_batches.batch_size = 3
  chosen, rejected = pair_scoring.cached_log_probs(path, "pairs A", other_batches, None, None)
  assert other_batches.scored == list(range(10))  # batches of 4 are not whole batches of 3
  np.testing.assert_array_equal(rejected, -2.0 * np.arange(10))
  resumed = Scorer()  # the whole pass is saved: read, nothing scored
  assert pair_scoring.cached_log_probs(path, "pairs A", resumed, None, None)[0].tolist() == chosen.tolist()
  assert resumed.scored == []


def test_a_reference_pass_another_run_made_for_the_same_pairs_and_model_is_taken_over(tmp_path):
  class Scorer:
    pairs, batch_size = [0, 1, 2], 4

    def __init__(self):
      self.calls = 0

    def __call__(self, params, base=None, *, desc=None, done=((), ()), on_batch=None):
      self.calls += 1
      return np.asarray([-1.0, -2.0, -3.0]), np.asarray([-4.0, -5.0, -6.0])

  other, here = tmp_path / "other" / "reference_logps.npz", tmp_path / "here" / "reference_logps.npz"
  other.parent.mkdir()
  made = Scorer()
  pair_scoring.cached_log_probs(other, "pairs A", made, None, None)
  taken = Scorer()
  chosen, _ = pair_scoring.cached_log_probs(here, "pairs A", taken, None, None, made_elsewhere=[other.parent])
  assert taken.calls == 0 and chosen.tolist() == [-1.0, -2.0, -3.0] and here.samefile(other)
  other_pairs = Scorer()  # made for other pairs (or another reference): computed here
  pair_scoring.cached_log_probs(
    tmp_path / "third" / other.name, "pairs B", other_pairs, None, None, made_elsewhere=[other.parent]
  )
  assert other_pairs.calls == 1
