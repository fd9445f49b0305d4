"""The next token's choice (srit_jax/generation/next_token.py): greedy as argmax, the nucleus
without a sort as its definition (the sampled frequencies: tests/generation_test.py)."""

import jax
import numpy as np
import pytest

from srit_jax.generation import next_token


def test_greedy_tokens_equal_argmax_with_ties():
  rng = np.random.default_rng(0)
  logits = rng.integers(-3, 4, size=(64, 1000)).astype(np.float32)  # many tied maxima per row
  logits[5] = 0.0  # a row that is all one value
  logits[6, [7, 900]] = 100.0
  expected = np.argmax(logits, axis=-1)  # the first index of the largest value
  np.testing.assert_array_equal(np.asarray(next_token.greedy_tokens(jax.numpy.asarray(logits))), expected)
  assert int(next_token.greedy_tokens(jax.numpy.asarray(logits))[6]) == 7


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.95, 0.999])
def test_the_nucleus_without_a_sort_keeps_what_the_definition_keeps(top_p):
  """Each token whose strictly more probable tokens hold less than top_p of the mass (float64
  reference), for spread and peaked rows, ties, -inf, one dominant token, an all-equal row and
  huge logits; a token whose mass above lies within float32 rounding of top_p may go either way."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(12, 3000)) * rng.choice([0.3, 1.0, 3.0, 10.0], size=(12, 1))
  logits[1, ::3] = logits[1, 1]  # a thousand ties
  logits[2, :2000] = -np.inf  # filtered by top-k first
  logits[3, 17] = 40.0  # one token holds nearly all the mass
  logits[4] = -2.5  # every token equal
  logits[5] = rng.normal(size=3000) * 1e4  # huge magnitudes
  logits[6] = np.round(logits[6], 1)  # many small groups of ties
  logits = logits.astype(np.float32)
  probs = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  above = np.array([[probs[b][logits[b] > x].sum() for x in logits[b]] for b in range(len(logits))])
  expected = above < top_p
  kept = np.asarray(next_token.nucleus(jax.numpy.asarray(logits), top_p))
  unclear = np.abs(above - top_p) < 1e-5
  np.testing.assert_array_equal(kept[~unclear], expected[~unclear])
  assert kept.any(axis=-1).all()  # the most probable token always stays
  assert kept[4].all() and kept[3].sum() == 1 and not kept[2, :2000].any()
  np.testing.assert_array_equal(kept[1, ::3], kept[1, 1])  # ties go together
