"""Uncertainty of accuracies and of differences between two stages evaluated on the same questions.

- `wilson_interval`: the 95% interval of one accuracy.
- `mcnemar_exact`: the two-sided exact McNemar test of two stages on the same questions (a
  binomial test on the questions where exactly one stage is right).
- `bootstrap_difference`: a 95% interval of the accuracy difference by resampling questions
  (paired: a question's two outcomes are drawn together).
- `paired_comparison`: all of it for two stages' per-question outcomes, keyed by question.
- `pass_at_k` and `mean_interval`: sampled answers' pass@k per question (the unbiased estimator
  of Chen et al., 2021) and a bootstrap interval of its mean over questions.
- `paired_mean_difference`: two stages' per-question values (pass@1: the share of a question's
  sampled answers that is right) on the same questions, their difference with a paired interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

SMALLEST_DIFFERENCE_OF_INTEREST = 0.05  # five accuracy points


def wilson_interval(correct: int, total: int, z: float = 1.959964) -> tuple[float, float]:
  """The 95% Wilson score interval of a proportion (sound at 0, 1 and small n)."""
  if total == 0:
    return 0.0, 1.0
  p = correct / total
  centre = (p + z * z / (2 * total)) / (1 + z * z / total)
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
  return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
  """Two-sided exact p-value of McNemar's test from the two discordant counts.

  Under the null each discordant question is equally likely to favour either stage:
  p = min(1, 2 · P[Binomial(b + c, 1/2) <= min(b, c)]). No discordant question: p = 1.
  """
  n = only_first + only_second
  if n == 0:
    return 1.0
  k = min(only_first, only_second)
  tail = sum(math.comb(n, i) for i in range(k + 1))
  return min(1.0, 2 * tail / 2**n)


def bootstrap_difference(
  first: np.ndarray, second: np.ndarray, *, resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
  """(second − first accuracy, low, high): the percentile interval over question resamples."""
  first, second = np.asarray(first, float), np.asarray(second, float)
  if first.shape != second.shape or first.ndim != 1:
    raise ValueError(f"paired outcomes must be two vectors of one length, got {first.shape} and {second.shape}")
  difference = float(second.mean() - first.mean()) if len(first) else 0.0
  if len(first) == 0:
    return 0.0, 0.0, 0.0
  rng = np.random.default_rng(seed)
  rows = rng.integers(0, len(first), size=(resamples, len(first)))
  samples = (second[rows] - first[rows]).mean(axis=1)
  tail = (1 - level) / 2 * 100
  low, high = np.percentile(samples, [tail, 100 - tail])
  return difference, float(low), float(high)


def resolves(n: int, discordant: int, difference: float = SMALLEST_DIFFERENCE_OF_INTEREST) -> bool:
  """Whether an evaluation of `n` questions, on which two stages disagree `discordant` times,
  could show a `difference` at p < 0.05: McNemar's p of that difference made of the observed
  disagreements (at least as many as the difference needs)."""
  return n > 0 and _significant_with(discordant, math.ceil(round(difference * n, 9)))


def _significant_with(discordant: int, k: int) -> bool:
  """McNemar's p < 0.05 for a difference of k questions made of at least `discordant` disagreements."""
  total = max(discordant, k)
  total += (total - k) % 2  # the two discordant counts differ by k
  return mcnemar_exact((total - k) // 2, (total + k) // 2) < 0.05


def detectable_difference(n: int, discordant: int) -> float:
  """The smallest difference (a fraction of `n`) that `resolves` at p < 0.05 with these
  disagreements: the power of a paired comparison, stated as the effect it could show."""
  return next((k / n for k in range(1, n + 1) if _significant_with(discordant, k)), math.inf)


def paired_comparison(first: Mapping[str, bool], second: Mapping[str, bool], *, seed: int = 0) -> dict:
  """Two stages' outcomes on the questions both answered: counts, difference, interval, p-value.

  `first` and `second` map question ids to whether each stage was right. `difference` is
  second − first. `resolves_5_points` says whether this many questions, disagreeing as often
  as they do, could show a five-point difference at p < 0.05 (see `resolves`).
  """
  ids = sorted(set(first) & set(second))
  a = np.asarray([bool(first[i]) for i in ids])
  b = np.asarray([bool(second[i]) for i in ids])
  only_first, only_second = int(np.sum(a & ~b)), int(np.sum(~a & b))
  difference, low, high = bootstrap_difference(a, b, seed=seed)
  return {
    "n": len(ids),
    "first_correct": int(a.sum()),
    "second_correct": int(b.sum()),
    "both_correct": int(np.sum(a & b)),
    "neither_correct": int(np.sum(~a & ~b)),
    "only_first_correct": only_first,
    "only_second_correct": only_second,
    "difference": difference,
    "ci95": [low, high],
    "mcnemar_p": mcnemar_exact(only_first, only_second),
    "resolves_5_points": resolves(len(ids), only_first + only_second),
    "detectable_difference": detectable_difference(len(ids), only_first + only_second),
  }


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
  """The chance that at least one of k answers drawn without replacement from `num_samples`, of
  which `num_correct` are right, is right: 1 − C(n − c, k) / C(n, k), unbiased for pass@k."""
  if not 0 < k <= num_samples or not 0 <= num_correct <= num_samples:
    raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n, got k={k}, n={num_samples}, c={num_correct}")
  return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


def mean_interval(values, *, resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high) of per-question values: the percentile interval over question resamples."""
  values = np.asarray(values, float)
  if values.ndim != 1:
    raise ValueError(f"per-question values must be a vector, got shape {values.shape}")
  if len(values) == 0:
    return 0.0, 0.0, 1.0
  rng = np.random.default_rng(seed)
  means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
  tail = (1 - level) / 2 * 100
  low, high = np.percentile(means, [tail, 100 - tail])
  return float(values.mean()), float(low), float(high)


def paired_mean_difference(first: Mapping[str, float], second: Mapping[str, float], *, seed: int = 0) -> dict:
  """Two stages' per-question values (in [0, 1]) on the questions both answered: their means and
  `difference` (second − first) with a 95% interval by resampling questions (paired), as
  `paired_comparison` gives for right-or-wrong outcomes."""
  ids = sorted(set(first) & set(second))
  a = np.asarray([float(first[i]) for i in ids])
  b = np.asarray([float(second[i]) for i in ids])
  difference, low, high = bootstrap_difference(a, b, seed=seed)
  return {
    "n": len(ids),
    "first_mean": float(a.mean()) if ids else 0.0,
    "second_mean": float(b.mean()) if ids else 0.0,
    "difference": difference,
    "ci95": [low, high],
  }
