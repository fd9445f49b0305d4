"""Intervals and paired tests against values computed by hand, including the edges where every
question agrees and where every question disagrees."""

import numpy as np
import pytest

from srit_jax import statistics


def test_wilson_interval():
  """The bounds are the two p where the observed proportion sits exactly z standard errors away:
  (x/n - p)^2 = z^2 p (1 - p) / n, a quadratic in p."""
  import numpy as np

  z = 1.959964
  for correct, total in ((472, 600), (3, 8), (1, 3)):
    phat = correct / total
    roots = np.sort(np.roots([1 + z * z / total, -(2 * phat + z * z / total), phat * phat]).real)
    assert statistics.wilson_interval(correct, total) == pytest.approx(tuple(roots), abs=1e-9)
  assert statistics.wilson_interval(0, 8)[0] == 0.0 and statistics.wilson_interval(8, 8)[1] == 1.0
  assert statistics.wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
  "only_first,only_second,expected",
  [
    (0, 0, 1.0),  # every question agrees
    (1, 0, 1.0),  # n = 1: 2 · P[X <= 0] = 2 · 1/2
    (0, 6, 2 / 64),  # n = 6: 2 · C(6,0) / 2^6
    (2, 8, 2 * (1 + 10 + 45) / 1024),  # n = 10: 2 · (C(10,0) + C(10,1) + C(10,2)) / 2^10
    (5, 5, 1.0),  # symmetric: capped at 1
    (10, 0, 2 / 1024),  # every question disagrees, all one way
  ],
)
def test_exact_mcnemar_p_values(only_first, only_second, expected):
  assert statistics.mcnemar_exact(only_first, only_second) == pytest.approx(expected, rel=1e-12)
  assert statistics.mcnemar_exact(only_second, only_first) == pytest.approx(expected, rel=1e-12)


def test_bootstrap_interval_of_the_difference():
  ones, zeros = np.ones(20), np.zeros(20)
  assert statistics.bootstrap_difference(ones, ones) == (0.0, 0.0, 0.0)  # all agree
  assert statistics.bootstrap_difference(zeros, ones) == (1.0, 1.0, 1.0)  # all disagree, second right
  assert statistics.bootstrap_difference(ones, zeros) == (-1.0, -1.0, -1.0)
  # Two questions, each stage right on one: resampled differences are -1, 0, 1 with
  # probabilities 1/4, 1/2, 1/4, so the 95% percentile interval is [-1, 1].
  difference, low, high = statistics.bootstrap_difference(np.array([1, 0]), np.array([0, 1]))
  assert (difference, low, high) == (0.0, -1.0, 1.0)
  # A large sample: the interval is centred on the difference with the normal half-width.
  rng = np.random.default_rng(1)
  a, b = rng.random(2000) < 0.4, rng.random(2000) < 0.5
  difference, low, high = statistics.bootstrap_difference(a, b)
  half = 1.96 * np.std(b.astype(float) - a.astype(float)) / np.sqrt(2000)
  assert low < difference < high and (high - low) / 2 == pytest.approx(half, rel=0.1)


def test_paired_comparison_counts_by_question():
  first = {"a": True, "b": True, "c": False, "d": False, "e": True}
  second = {"a": True, "b": False, "c": True, "d": True, "f": True}  # e and f are not shared
  c = statistics.paired_comparison(first, second)
  assert c["n"] == 4 and (c["first_correct"], c["second_correct"]) == (2, 3)
  assert (c["both_correct"], c["neither_correct"], c["only_first_correct"], c["only_second_correct"]) == (1, 0, 1, 2)
  assert c["difference"] == pytest.approx(0.25)
  assert c["mcnemar_p"] == pytest.approx(statistics.mcnemar_exact(1, 2))
  assert c["resolves_5_points"] is False  # four questions cannot tell five points from none


def test_whether_an_evaluation_can_resolve_five_points():
  # Best case, every disagreement one way: 5 points of n questions need 6 of them (p = 2/64 < 0.05).
  assert not statistics.resolves(100, 0) and statistics.resolves(120, 0)
  # The smallest difference each could show: 6 of 6 disagreements in one direction (p = 0.031).
  assert statistics.detectable_difference(100, 0) == 0.06
  assert statistics.detectable_difference(300, 40) <= 0.05 < statistics.detectable_difference(300, 60)
  assert statistics.detectable_difference(4, 0) == float("inf")
  # 300 questions: 15 more on one side, significant only if the stages disagree rarely enough.
  assert statistics.resolves(300, 40)  # 13 against 28: p < 0.05
  assert not statistics.resolves(300, 60)  # 23 against 38: p > 0.05
  assert statistics.mcnemar_exact(13, 28) < 0.05 < statistics.mcnemar_exact(23, 38)


@pytest.mark.parametrize("n,c", [(1, 0), (1, 1), (4, 1), (5, 2), (8, 3), (8, 8), (6, 0)])
def test_pass_at_k_is_the_share_of_k_subsets_holding_a_right_answer(n, c):
  import itertools

  right = [True] * c + [False] * (n - c)
  for k in range(1, n + 1):
    subsets = list(itertools.combinations(right, k))
    expected = sum(any(s) for s in subsets) / len(subsets)
    assert statistics.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)
  assert statistics.pass_at_k(n, c, 1) == pytest.approx(c / n)  # pass@1: the share of right answers


@pytest.mark.parametrize("n,c,k", [(4, 1, 0), (4, 1, 5), (4, 5, 2), (4, -1, 2)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
  with pytest.raises(ValueError, match="pass@k needs"):
    statistics.pass_at_k(n, c, k)


def test_mean_interval_over_questions():
  values = np.random.default_rng(0).uniform(size=400)
  mean, low, high = statistics.mean_interval(values, seed=1)
  assert mean == pytest.approx(values.mean()) and low < mean < high
  half = 1.96 * values.std() / np.sqrt(len(values))  # the normal interval, which the bootstrap approaches
  assert low == pytest.approx(mean - half, abs=0.2 * half) and high == pytest.approx(mean + half, abs=0.2 * half)
  assert statistics.mean_interval(np.full(50, 0.25)) == (0.25, 0.25, 0.25)


def test_paired_mean_difference_pairs_per_question_values_by_id():
  first = {"a": 0.5, "b": 0.0, "c": 1.0, "x": 1.0}
  second = {"c": 0.75, "a": 1.0, "b": 0.25, "y": 0.0}  # x and y are not shared; order differs
  d = statistics.paired_mean_difference(first, second)
  assert d["n"] == 3 and d["first_mean"] == pytest.approx(0.5) and d["second_mean"] == pytest.approx(2 / 3)
  assert d["difference"] == pytest.approx(1 / 6)
  # Every question moves by the same amount: every resample has that difference.
  shifted = {k: v + 0.125 for k, v in first.items()}
  assert statistics.paired_mean_difference(first, shifted)["ci95"] == pytest.approx([0.125, 0.125])
  # Paired, not pooled: large spread between questions, a small steady gain within each.
  rng = np.random.default_rng(0)
  base = {str(i): v for i, v in enumerate(rng.uniform(0, 0.9, size=500))}
  gained = {k: v + 0.02 + rng.normal(0, 0.01) for k, v in base.items()}
  low, high = statistics.paired_mean_difference(base, gained)["ci95"]
  assert 0.015 < low < 0.02 < high < 0.025
