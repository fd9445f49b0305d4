"""Random preference pairs of uneven lengths, as token ids, their batches in any layout, and
their log-probs."""

import jax
import numpy as np

from srit_jax.data import pair_batches
from srit_jax.data.sft_examples import TokenizedExample
from srit_jax.training import dpo_step

# Jitted, as the DPO step runs it: one program per batch shape instead of an op at a time.
pair_log_probs = jax.jit(dpo_step.pair_log_probs, static_argnums=0)


def random_pairs(n, *, vocab=128, seed=0, prompt=(4, 10), chosen=(2, 9), rejected=(1, 5)):
  """`n` pairs, each side its prompt (shared by both sides) then an answer; lengths drawn from the
  given [low, high) ranges, so that sides differ in length within and across pairs."""
  rng = np.random.default_rng(seed)
  draw = lambda bounds: list(rng.integers(3, vocab, int(rng.integers(*bounds))))
  pairs = []
  for _ in range(n):
    head = draw(prompt)
    side = lambda answer, head=head: TokenizedExample(head + answer, [0] * len(head) + [1] * len(answer))
    pairs.append(pair_batches.TokenizedPair(side(draw(chosen)), side(draw(rejected))))
  return pairs


def max_side(pairs) -> int:
  """Positions of the longest side."""
  return max(len(side.tokens) - 1 for p in pairs for side in (p.chosen, p.rejected))


def pair_batch(
  pairs,
  packing="none",
  row_length=None,
  *,
  num_microbatches=1,
  reference=None,
  rows=None,
  chosen_only=False,
  answers=False,
):
  """A batch of all `pairs` in one process, with the rows it needs (or `rows` per microbatch);
  with `answers`, listing each row's answer positions (as many as a row needs)."""
  layout = pair_batches.PairLayout(packing, row_length or max_side(pairs), chosen_only)
  indices = list(range(len(pairs)))
  most_rows, most_answers = layout.needs(pairs, indices, num_microbatches)
  rows, width = rows or most_rows, most_answers if answers else 0
  return pair_batches.make_pair_batch(
    pairs, indices, layout, rows, num_microbatches=num_microbatches, reference=reference, answer_positions=width
  )
