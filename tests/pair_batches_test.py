"""Preference pairs in rows: every packing gives the log-probs, losses and gradients of one row
per side, and so does the output layer at the answer positions alone; the layouts themselves;
the iterator's state, shares, row count and answer positions."""

import jax
import numpy as np
import pytest
from random_pairs import max_side, pair_batch, pair_log_probs, random_pairs

from srit_jax.conversion import hf_checkpoint, loading
from srit_jax.data import pair_batches
from srit_jax.data.sft_examples import TokenizedExample
from srit_jax.training import dpo_step

# (packing, row length as a multiple of the longest side): rows of several pairs, and rows so
# short that shared pairs split into sides.
LAYOUTS = [("sides", 1), ("sides", 3), ("shared_prompt", 2), ("shared_prompt", 4), ("shared_prompt", 1)]


@pytest.fixture
def tiny(hf_model_dir):
  return hf_checkpoint.load_hf_checkpoint(hf_model_dir("llama")[0])


def _layout_batch(pairs, packing, factor):
  return pair_batch(pairs, packing, int(factor * max_side(pairs)))


def _dpo_loss(config, params, batch, reference, base=None):
  policy = pair_log_probs(config, params, batch, base=base)
  per_pair, _, _ = dpo_step.dpo_loss(*policy, *reference, beta=0.5)
  return per_pair.mean() + 0.3 * dpo_step.length_normalized_nll(policy[0], batch["chosen_lengths"]).mean()


_dpo_loss_grad = jax.jit(jax.grad(_dpo_loss, argnums=1), static_argnums=0)


def _assert_same_log_probs_and_gradients(config, params, expected_batch, batch, *, rtol, grad_rtol, grad_atol):
  """`batch` gives the (chosen, rejected) log-probs of `expected_batch` (rtol, atol 1e-5), and the
  same gradients of a DPO + NLL loss."""
  expected = pair_log_probs(config, params, expected_batch)
  got = pair_log_probs(config, params, batch)
  for a, b in zip(got, expected):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=1e-5)
  reference = [np.asarray(x) - 0.5 for x in expected]
  grads = [_dpo_loss_grad(config, params, b, reference) for b in (expected_batch, batch)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=grad_rtol, atol=grad_atol), *grads)


@pytest.mark.parametrize("packing, factor", LAYOUTS)
def test_packed_pairs_give_the_log_probs_losses_and_gradients_of_one_row_per_side(tiny, packing, factor):
  config, params = tiny
  pairs = random_pairs(12, seed=1, prompt=(3, 12), chosen=(2, 14), rejected=(1, 4))
  unpacked, packed = pair_batch(pairs), _layout_batch(pairs, packing, factor)
  assert packed["rows"]["tokens"].size < unpacked["rows"]["tokens"].size or factor == 1
  _assert_same_log_probs_and_gradients(config, params, unpacked, packed, rtol=1e-5, grad_rtol=1e-4, grad_atol=1e-6)


@pytest.mark.parametrize("packing, factor", [("none", 1), *LAYOUTS])
@pytest.mark.parametrize("chosen_only", [False, True])
def test_the_output_layer_at_answer_positions_alone_gives_the_log_probs_losses_and_gradients(
  tiny, packing, factor, chosen_only
):
  config, params = tiny
  pairs = random_pairs(12, seed=7, prompt=(3, 12), chosen=(2, 14), rejected=(1, 4))
  row_length = int(factor * max_side(pairs))
  everywhere = pair_batch(pairs, packing, row_length, chosen_only=chosen_only)
  at_answers = pair_batch(pairs, packing, row_length, chosen_only=chosen_only, answers=True)
  at = at_answers["rows"][pair_batches.ANSWER_FIELD]
  assert at.shape[1] < row_length  # fewer positions through the output layer than the row holds
  _assert_same_log_probs_and_gradients(
    config, params, everywhere, at_answers, rtol=1e-6, grad_rtol=1e-5, grad_atol=1e-7
  )


def test_answer_positions_list_each_rows_answer_tokens_then_the_row_length():
  pairs = [
    pair_batches.TokenizedPair(TokenizedExample([5, 6, 7, 8], [0, 0, 1, 1]), TokenizedExample([5, 6, 9], [0, 0, 1]))
  ]
  batch = pair_batch(pairs, "shared_prompt", 6, answers=True)
  # The trunk predicts 6; the chosen branch 7 and 8 (positions 1, 2); the rejected branch 9 (position 3).
  assert batch["rows"]["loss_weights"][0].tolist() == [0, 1, 1, 1, 0, 0]
  assert batch["rows"][pair_batches.ANSWER_FIELD].tolist() == [[1, 2, 3]]
  wide = pair_batches.make_pair_batch(pairs, [0], pair_batches.PairLayout("shared_prompt", 6), 2, answer_positions=5)
  assert wide["rows"][pair_batches.ANSWER_FIELD].tolist() == [[1, 2, 3, 6, 6], [6] * 5]  # padding: past the end
  with pytest.raises(ValueError, match="3 answer positions, more than answer_positions=2"):
    pair_batches.make_pair_batch(pairs, [0], pair_batches.PairLayout("shared_prompt", 6), 1, answer_positions=2)
  # A run's width: rounded up, and none where it would not be shorter than the row.
  assert pair_batches.answer_positions_per_row(1, 448) == pair_batches.ANSWER_MULTIPLE
  assert pair_batches.answer_positions_per_row(168, 448) == 192
  assert pair_batches.answer_positions_per_row(420, 448) == 0


def test_shared_prompt_rows_hold_the_prompt_once_and_each_answer_as_a_branch():
  head, chosen, rejected = [5, 6, 7, 8], [20, 21, 22], [30, 31]
  side = lambda answer: TokenizedExample(head + answer, [0] * 4 + [1] * len(answer))
  pairs = [pair_batches.TokenizedPair(side(chosen), side(rejected))]
  assert pairs[0].shared_prefix() == 4
  batch = pair_batch(pairs, "shared_prompt", 10)
  rows = {k: v[0].tolist() for k, v in batch["rows"].items()}
  # The trunk feeds prompt tokens 5, 6, 7; each branch starts from the prompt's last token at its position.
  assert rows["tokens"] == [5, 6, 7, 8, 20, 21, 8, 30, 0, 0]
  assert rows["targets"] == [6, 7, 8, 20, 21, 22, 30, 31, 0, 0]
  assert rows["positions"] == [0, 1, 2, 3, 4, 5, 3, 4, 0, 0]
  assert rows["branch_ids"] == [0, 0, 0, 1, 1, 1, 2, 2, 0, 0]
  assert rows["segment_ids"] == [1] * 8 + [0, 0]
  assert rows["loss_weights"] == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0]
  assert rows["answer_slots"] == [2, 2, 2, 0, 0, 0, 1, 1, 2, 2]  # slot 2: no answer (one pair)
  np.testing.assert_array_equal(batch["chosen_lengths"], [3])
  np.testing.assert_array_equal(batch["rejected_lengths"], [2])


def test_a_pair_whose_prompts_differ_shares_nothing_and_keeps_both_sides_in_one_row():
  a = TokenizedExample([5, 6, 7, 20, 21], [0, 0, 0, 1, 1])
  b = TokenizedExample([9, 6, 7, 30], [0, 0, 0, 1])  # its prompt was cut otherwise
  pairs = [pair_batches.TokenizedPair(a, b)]
  assert pairs[0].shared_prefix() == 0
  batch = pair_batch(pairs, "shared_prompt", 8)
  assert batch["rows"]["tokens"].shape == (1, 8)
  assert batch["rows"]["segment_ids"][0].tolist() == [1, 1, 1, 1, 2, 2, 2, 0]
  assert batch["rows"]["branch_ids"].max() == 0


def test_packed_sides_of_one_pair_can_land_in_different_rows(tiny):
  config, params = tiny
  pairs = random_pairs(6, seed=4, prompt=(5, 9), chosen=(8, 12), rejected=(1, 3))
  batch = _layout_batch(pairs, "sides", 1.5)
  slots = batch["rows"]["answer_slots"]
  rows_of = lambda slot: set(np.nonzero((slots == slot).any(axis=1))[0])
  assert any(rows_of(2 * p) != rows_of(2 * p + 1) for p in range(len(pairs)))
  for a, b in zip(pair_log_probs(config, params, batch), pair_log_probs(config, params, pair_batch(pairs))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_packing_holds_fewer_positions_on_pairs_with_long_prompts():
  # The study's shape: a prompt about twice the chosen answer, a short rejected answer.
  pairs = random_pairs(64, seed=2, prompt=(90, 110), chosen=(30, 60), rejected=(5, 12))
  sizes = {
    "none": pair_batch(pairs)["rows"]["tokens"].size,
    "sides": pair_batch(pairs, "sides", 2 * max_side(pairs))["rows"]["tokens"].size,
    "shared_prompt": pair_batch(pairs, "shared_prompt", 2 * max_side(pairs))["rows"]["tokens"].size,
  }
  # Rows of one side are 76% full here: packing sides fills them; sharing the prompt also drops a third.
  assert sizes["none"] > 1.15 * sizes["sides"]
  assert sizes["none"] >= 1.9 * sizes["shared_prompt"]


def test_each_process_share_of_a_batch_gives_the_pairs_of_the_whole(tiny):
  config, params = tiny
  pairs = random_pairs(8, seed=3)
  layout = pair_batches.PairLayout("shared_prompt", 2 * max_side(pairs))
  indices = [5, 2, 7, 0, 1, 6, 3, 4]
  whole = pair_batches.make_pair_batch(pairs, indices, layout, layout.rows_needed(pairs, indices))
  rows = max(layout.rows_needed(pairs, indices[:4]), layout.rows_needed(pairs, indices[4:]))
  halves = [
    pair_batches.make_pair_batch(
      pairs, indices[4 * p : 4 * p + 4], layout, rows, first_slot=4 * p, slots_per_microbatch=8
    )
    for p in range(2)
  ]
  joined = jax.tree.map(lambda *x: np.concatenate(x), *halves)
  for a, b in zip(pair_log_probs(config, params, joined), pair_log_probs(config, params, whole)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_packed_pairs_equal_one_row_per_side_under_lora(hf_model_dir):
  from lora_test import _lora

  model = loading.load_model(hf_model_dir("llama")[0], lora=_lora())
  adapters = jax.tree.map(lambda x: x + 0.01 * np.random.default_rng(0).normal(size=x.shape), model.adapters)
  pairs = random_pairs(8, seed=5)
  shared = lambda **kw: pair_batch(pairs, "shared_prompt", 2 * max_side(pairs), **kw)
  batches = [pair_batch(pairs), shared(), shared(answers=True)]  # the last: the output layer at answers alone
  logps = [pair_log_probs(model.config, adapters, b, base=model.params) for b in batches]
  for packed in logps[1:]:
    for a, b in zip(packed, logps[0]):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  reference = [np.asarray(x) - 0.5 for x in logps[0]]
  grads = [_dpo_loss_grad(model.config, adapters, b, reference, model.params) for b in batches]
  for packed in grads[1:]:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), packed, grads[0])


def test_iterator_state_shares_and_the_row_count_of_a_run():
  pairs = random_pairs(10, seed=6)
  layout = pair_batches.PairLayout("shared_prompt", 2 * max_side(pairs))
  make = lambda **kw: pair_batches.PairBatchIterator(pairs, batch_size=4, layout=layout, seed=3, **kw)
  iterator = make()
  seen = [iterator.next_indices() for _ in range(2)]
  state = iterator.get_state()
  after = [iterator.next_indices() for _ in range(4)]
  assert sorted(seen[0] + seen[1] + after[0][:2]) == list(range(10))  # one epoch visits every pair once
  resumed = make()
  resumed.set_state(state)
  assert [resumed.next_indices() for _ in range(4)] == after

  # The run's row count covers every batch of the run, and leaves the iterator where it was.
  iterator = make(num_microbatches=2)
  rows, answers = iterator.needs_for_steps(6)
  assert iterator.get_state() == {"epoch": 0, "index": 0}
  needs, answer_needs = [], []
  for _ in range(6):
    indices = iterator.next_indices()
    needs.append(layout.rows_needed(pairs, indices, 2))
    answer_needs.append(layout.needs(pairs, indices, 2)[1])
    assert layout.needs(pairs, indices, 2)[0] == needs[-1]
  assert rows == max(needs)
  assert answers == max(answer_needs) and len(set(answer_needs)) > 1
  # Its batches list the answer positions of every row: where the loss weights are.
  iterator = make(num_microbatches=2, rows_per_microbatch=rows)
  iterator.answer_positions = answers
  for _ in range(6):
    batch = next(iterator)
    listed = batch["rows"][pair_batches.ANSWER_FIELD]
    for weights_row, listed_row in zip(batch["rows"]["loss_weights"], listed):
      padding = [layout.row_length] * (answers - int(weights_row.sum()))
      assert listed_row.tolist() == [*np.flatnonzero(weights_row), *padding]

  # Each process keeps its share; slots number the whole batch's pairs per microbatch.
  reference = (np.arange(10.0), -np.arange(10.0))
  halves = [
    next(make(reference=reference, process_index=p, process_count=2, rows_per_microbatch=rows)) for p in range(2)
  ]
  whole = next(make(reference=reference))
  np.testing.assert_array_equal(np.concatenate([h["ref_chosen_logps"] for h in halves]), whole["ref_chosen_logps"])
  assert {int(s) for s in np.unique(halves[1]["rows"]["answer_slots"])} <= {4, 5, 6, 7, 8}


@pytest.mark.parametrize("num_microbatches, process_count", [(1, 1), (2, 1), (1, 2)])
def test_trimmed_batches_leave_out_only_rows_of_padding(num_microbatches, process_count):
  """With `trim_rows`, a batch holds the rows its pairs need on any process (in multiples of
  `trim_rows`), and is the run's full-size batch with only empty rows taken out."""
  pairs = random_pairs(40, seed=0, prompt=(2, 30), chosen=(1, 30))  # rows needed vary from batch to batch
  layout = pair_batches.PairLayout("shared_prompt", 2 * max_side(pairs))

  def make(trim_rows, process_index=0):
    iterator = pair_batches.PairBatchIterator(
      pairs,
      batch_size=16,
      layout=layout,
      seed=2,
      num_microbatches=num_microbatches,
      process_index=process_index,
      process_count=process_count,
    )
    iterator.rows_per_microbatch, _ = iterator.needs_for_steps(12)
    iterator.trim_rows = trim_rows
    return iterator

  counts, per_process = set(), []
  for process in range(process_count):
    full, trimmed, even = make(None, process), make(1, process), make(2, process)
    per_process.append([])
    for _ in range(12):
      big, small, paired = next(full), next(trimmed), next(even)
      rows = small["rows"]["tokens"].shape[0] // num_microbatches
      counts.add(rows)
      per_process[-1].append(rows)
      assert paired["rows"]["tokens"].shape[0] // num_microbatches == min(-(-rows // 2) * 2, full.rows_per_microbatch)
      for name, values in big["rows"].items():
        kept = values.shape[0] - small["rows"][name].shape[0]
        np.testing.assert_array_equal(values[: values.shape[0] - kept], small["rows"][name], err_msg=name)
        assert not kept or not big["rows"]["segment_ids"][-kept:].any()  # what was left out is padding
      for name in ("chosen_lengths", "rejected_lengths"):
        np.testing.assert_array_equal(big[name], small[name])
  assert len(counts) > 1 and max(counts) == full.rows_per_microbatch, counts
  assert all(rows == per_process[0] for rows in per_process)  # every process's share the same shape


@pytest.mark.parametrize("packing, factor", [("none", 1), ("sides", 3), ("shared_prompt", 2)])
def test_chosen_only_rows_give_the_chosen_log_probs_and_nll_gradients_of_whole_pairs(tiny, packing, factor):
  config, params = tiny
  pairs = random_pairs(12, seed=2, prompt=(3, 12), chosen=(2, 14), rejected=(2, 14))
  row_length = int(factor * max_side(pairs))
  whole = pair_batch(pairs, packing, row_length)
  chosen_only = pair_batch(pairs, packing, row_length, chosen_only=True)
  assert chosen_only["rows"]["tokens"].size < whole["rows"]["tokens"].size
  assert not np.any(chosen_only["rows"]["answer_slots"] % 2 == 1)  # no rejected answer in the rows
  expected, _ = pair_log_probs(config, params, whole)
  got, rejected = pair_log_probs(config, params, chosen_only)
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(rejected), 0.0)

  def nll(p, batch):
    chosen, _ = pair_log_probs(config, p, batch)
    return dpo_step.length_normalized_nll(chosen, batch["chosen_lengths"]).mean()

  grads = [jax.jit(jax.grad(nll))(params, batch) for batch in (whole, chosen_only)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), *grads)
