"""Preference pairs as token ids and batches of rows, one side per row or packed.

Each side (chosen, rejected) of a pair is its prompt rendered through the chat template as in
SFT, then the answer, with loss weight on answer tokens only. A batch holds a fixed number of
pairs laid out in rows by one of three packings:

- "none": one row of `max_length` positions per side (the layout every DPO trainer uses).
- "sides": every side is a segment of its own; segments are packed first-fit into rows.
- "shared_prompt": the prompt once, then both answers as two branches of one segment, each
  answer attending to the prompt and to itself only (branch ids; positions of the second
  answer restart where the prompt ends), so a pair costs prompt + chosen + rejected positions
  instead of twice the prompt. A pair whose sides do not share their prompt (cut differently
  to fit) goes as two segments in one row; one whose shared form does not fit a row (only when
  rows are shorter than 2 x max_length) as two sides packed like any others.

A layout may hold the chosen answers alone (`chosen_only`), for a loss that reads no rejected
answer (the NLL of the compute-matched control): each pair is then its chosen side, one row
each ("none") or packed like the sides.

Every position carries the answer slot its target belongs to (2p: chosen side of pair p, 2p + 1:
its rejected side), so the step sums answer log-probs per slot whatever the layout. With k
microbatches, pair i of a process goes to microbatch i mod k, and microbatch m's rows are
rows m, m + k, m + 2k, ... — the slices `accumulated_value_and_grad` deals — so no pair is
split between microbatches. The number of rows is fixed for a run (one compilation): the most
any of its batches needs, found by laying out the run's batches ahead (`rows_per_microbatch`).

Only answer tokens carry loss, and in the study's pairs they are about a quarter of a row's
positions (prompts are long, the padding is the rest). With `answer_positions` K set, each row
also lists where its answers are (`answer_positions` [R, K], then the row length as padding),
and the step runs the output layer (the vocabulary projection and its softmax) at those
positions only; K, like the rows, is the most any batch of the run needs.

Shapes: R rows, L row length, P pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from srit_jax.data import sft_examples as sft_data

PACKINGS = ("none", "sides", "shared_prompt")
ROW_FIELDS = ("tokens", "targets", "positions", "segment_ids", "loss_weights", "answer_slots")
BRANCH_FIELD = "branch_ids"  # in rows of shared-prompt pairs only
ANSWER_FIELD = "answer_positions"  # in batches made with answer_positions only
ANSWER_MULTIPLE = 32  # answer positions a row round up to a multiple of
LENGTH_FIELDS = ("chosen_lengths", "rejected_lengths")  # answer tokens per pair [P]


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
  chosen: sft_data.TokenizedExample
  rejected: sft_data.TokenizedExample

  def shared_prefix(self) -> int:
    """How many leading tokens both sides share with no loss on either (the rendered prompt)."""
    limit = min(len(self.chosen.tokens), len(self.rejected.tokens))
    n = 0
    while (
      n < limit
      and self.chosen.tokens[n] == self.rejected.tokens[n]
      and not self.chosen.loss_mask[n]
      and not self.rejected.loss_mask[n]
    ):
      n += 1
    return n


def tokenize_pairs(
  tokenizer, pairs: Sequence[dict], max_length: int, *, use_chat_template: bool = True, stats=None
) -> list[TokenizedPair]:
  """Pairs whose both sides fit `max_length` positions (prompts cut from the left first)."""
  stats = stats if stats is not None else sft_data.TokenizeStats()
  out = []
  for pair in pairs:
    sides = []
    for answer in (pair["chosen"], pair["rejected"]):
      prompt_ids, answer_ids = sft_data.tokenize_example(
        tokenizer, pair["prompt"], "", answer, use_chat_template=use_chat_template
      )
      sides.append(sft_data.fit_to_length(prompt_ids, answer_ids, max_length + 1, stats=stats))
    if all(side is not None for side in sides):
      out.append(TokenizedPair(*sides))
  return out


@dataclasses.dataclass(frozen=True)
class _Piece:
  """Consecutive positions of one segment: inputs tokens[start:stop - 1] predicting tokens[start + 1:stop]."""

  example: sft_data.TokenizedExample
  start: int
  branch: int
  slot: int  # answer slot of its targets; -1: none (a shared prompt)

  @property
  def size(self) -> int:
    return len(self.example.tokens) - 1 - self.start


# A segment is pieces laid out one after another; a unit is segments that share one row.
_Segment = list[_Piece]
_Unit = list[_Segment]


def _units(pair: TokenizedPair, slot: int, packing: str, row_length: int, chosen_only: bool) -> list[_Unit]:
  """The units of pair `slot`."""
  chosen, rejected = [_Piece(pair.chosen, 0, 0, 2 * slot)], [_Piece(pair.rejected, 0, 0, 2 * slot + 1)]
  if chosen_only:
    return [[chosen]]
  if packing != "shared_prompt":
    return [[chosen], [rejected]]
  prefix = pair.shared_prefix()
  if prefix < 2:  # nothing to share (the last prompt token starts each answer's branch): one row, two segments
    both = [chosen, rejected]
    return [both] if _unit_size(both) <= row_length else [[chosen], [rejected]]
  trunk = sft_data.TokenizedExample(pair.chosen.tokens[:prefix], pair.chosen.loss_mask[:prefix])
  shared = [
    _Piece(trunk, 0, 0, -1),
    _Piece(pair.chosen, prefix - 1, 1, 2 * slot),
    _Piece(pair.rejected, prefix - 1, 2, 2 * slot + 1),
  ]
  return [[shared]] if _unit_size([shared]) <= row_length else [[chosen], [rejected]]


def _unit_size(unit: _Unit) -> int:
  return sum(piece.size for segment in unit for piece in segment)


def _answer_count(row: list[_Segment]) -> int:
  """Positions of a row whose targets carry loss (answer tokens)."""
  return sum(sum(map(bool, piece.example.loss_mask[piece.start + 1 :])) for segment in row for piece in segment)


def _pack(units: list[_Unit], row_length: int, packing: str) -> list[list[_Segment]]:
  """Segments per row: one unit per row ("none"), else units first-fit in decreasing size."""
  if packing == "none":
    return units
  rows: list[list[_Segment]] = []
  room: list[int] = []
  for unit in sorted(units, key=_unit_size, reverse=True):
    size = _unit_size(unit)
    if size > row_length:
      raise ValueError(f"a side of {size} positions does not fit rows of {row_length}")
    target = next((r for r, free in enumerate(room) if free >= size), None)
    if target is None:
      rows.append([])
      room.append(row_length)
      target = len(rows) - 1
    rows[target].extend(unit)
    room[target] -= size
  return rows


@dataclasses.dataclass(frozen=True)
class PairLayout:
  """How pairs become rows: the packing, the row length (`max_length` for "none"), and whether
  the rows hold the chosen answers alone."""

  packing: str = "none"
  row_length: int = 384
  chosen_only: bool = False

  def __post_init__(self):
    if self.packing not in PACKINGS:
      raise ValueError(f"pair packing {self.packing!r} is not one of {PACKINGS}")

  def rows(self, pairs: Sequence[TokenizedPair], indices: Sequence[int]) -> list[list[_Segment]]:
    units = [
      unit
      for slot, index in enumerate(indices)
      for unit in _units(pairs[index], slot, self.packing, self.row_length, self.chosen_only)
    ]
    return _pack(units, self.row_length, self.packing)

  def max_rows(self, num_pairs: int, max_length: int) -> int:
    """Rows that `num_pairs` pairs of sides up to `max_length` positions can need at most."""
    one_per_pair = self.chosen_only or (self.packing == "shared_prompt" and self.row_length >= 2 * max_length)
    return num_pairs if one_per_pair else 2 * num_pairs

  def rows_needed(self, pairs: Sequence[TokenizedPair], indices: Sequence[int], num_microbatches: int = 1) -> int:
    """Rows per microbatch that these pairs (one process's share of a batch) need."""
    return max(len(self.rows(pairs, indices[m::num_microbatches])) for m in range(min(num_microbatches, len(indices))))

  def needs(self, pairs: Sequence[TokenizedPair], indices: Sequence[int], num_microbatches: int = 1) -> tuple[int, int]:
    """(rows per microbatch, the most answer positions a row holds) of these pairs, laid out once."""
    microbatches = [self.rows(pairs, indices[m::num_microbatches]) for m in range(min(num_microbatches, len(indices)))]
    return max(map(len, microbatches)), max(_answer_count(row) for rows in microbatches for row in rows)


def answer_positions_per_row(most: int, row_length: int) -> int:
  """The answer positions every row of a run lists: `most` (what its batches need) rounded up
  to a multiple of ANSWER_MULTIPLE; 0 (the output layer at every position) where that would not
  be shorter than the row."""
  width = -(-max(most, 1) // ANSWER_MULTIPLE) * ANSWER_MULTIPLE
  return width if width < row_length else 0


def make_pair_batch(
  pairs: Sequence[TokenizedPair],
  indices: Sequence[int],
  layout: PairLayout,
  rows_per_microbatch: int,
  *,
  num_microbatches: int = 1,
  first_slot: int = 0,
  slots_per_microbatch: int | None = None,
  reference=None,
  answer_positions: int = 0,
) -> dict:
  """{"rows": [R, L] arrays, "chosen_lengths" / "rejected_lengths": [P]} for the given pairs (this
  process's share of a batch; + their precomputed reference log-probs; + with `answer_positions`
  K, each row's answer positions [R, K], padded with L).

  Local pair i goes to microbatch i mod k as slot `first_slot` + i // k of that microbatch
  (processes before this one hold the slots below `first_slot`); `slots_per_microbatch` (the
  whole batch's pairs / k; default this share's) sizes the slot range, one more slot for
  positions that belong to no answer.
  """
  k = num_microbatches
  if len(indices) % k:
    raise ValueError(f"{len(indices)} pairs do not split into {k} microbatches")
  slots = len(indices) // k if slots_per_microbatch is None else slots_per_microbatch
  num_rows, length = rows_per_microbatch * k, layout.row_length
  tokens, targets, positions, segments, branches = (np.zeros((num_rows, length), np.int32) for _ in range(5))
  weights = np.zeros((num_rows, length), np.float32)
  answer_slots = np.full((num_rows, length), 2 * slots, np.int32)  # the slot of no answer
  for m in range(k):
    rows = layout.rows(pairs, indices[m::k])
    if len(rows) > rows_per_microbatch:
      raise ValueError(f"these pairs need {len(rows)} rows of {length} per microbatch, more than {rows_per_microbatch}")
    for r, segments_of_row in enumerate(rows):
      row, offset = r * k + m, 0
      for segment, pieces in enumerate(segments_of_row, start=1):
        for piece in pieces:
          n, example = piece.size, piece.example
          span = slice(offset, offset + n)
          tokens[row, span] = example.tokens[piece.start : -1]
          targets[row, span] = example.tokens[piece.start + 1 :]
          positions[row, span] = np.arange(piece.start, piece.start + n)
          segments[row, span] = segment
          branches[row, span] = piece.branch
          weights[row, span] = example.loss_mask[piece.start + 1 :]
          if piece.slot >= 0:
            answer_slots[row, span] = 2 * first_slot + piece.slot
          offset += n
  lengths = np.asarray([[sum(pairs[i].chosen.loss_mask), sum(pairs[i].rejected.loss_mask)] for i in indices])
  batch = {
    "rows": {
      "tokens": tokens,
      "targets": targets,
      "positions": positions,
      "segment_ids": segments,
      "loss_weights": weights,
      "answer_slots": answer_slots,
    },
    "chosen_lengths": lengths[:, 0].astype(np.float32),
    "rejected_lengths": lengths[:, 1].astype(np.float32),
  }
  if layout.packing == "shared_prompt":
    batch["rows"][BRANCH_FIELD] = branches
  if answer_positions:
    batch["rows"][ANSWER_FIELD] = _answer_positions(weights, answer_positions)
  if reference is not None:
    batch["ref_chosen_logps"] = reference[0][np.asarray(indices)]
    batch["ref_rejected_logps"] = reference[1][np.asarray(indices)]
  return batch


def _answer_positions(weights_RxL: np.ndarray, width: int) -> np.ndarray:
  """[R, width]: each row's positions of nonzero loss weight, then the row length (past its end)."""
  num_rows, length = weights_RxL.shape
  positions = np.full((num_rows, width), length, np.int32)
  for row in range(num_rows):
    where = np.flatnonzero(weights_RxL[row])
    if len(where) > width:
      raise ValueError(f"a row holds {len(where)} answer positions, more than answer_positions={width}")
    positions[row, : len(where)] = where
  return positions


class PairBatchIterator:
  """Seeded per-epoch shuffling of pairs, `batch_size` pairs per batch laid out by `layout`; state
  (epoch, index) saved with each checkpoint; each process keeps its block of the global batch.

  Every batch has `rows_per_microbatch` rows per microbatch; with `trim_rows` set (the multiple
  the rows round up to, such as the devices a process splits them over), only the rows its pairs
  need on any process, at most that many: the rows left out would hold padding alone, and a step
  runs one of a few shapes (one compilation each) instead of the largest every time. With
  `answer_positions` set (see the module), batches list each row's answer positions."""

  def __init__(
    self,
    pairs,
    *,
    batch_size: int,
    layout: PairLayout,
    seed: int,
    num_microbatches: int = 1,
    rows_per_microbatch: int | None = None,
    reference=None,
    process_index=None,
    process_count=None,
  ):
    if not pairs:
      raise ValueError("no preference pairs to train on")
    self.pairs, self.batch_size, self.layout, self.seed = pairs, batch_size, layout, seed
    self.num_microbatches, self.reference = num_microbatches, reference
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if batch_size % (self.process_count * num_microbatches):
      raise ValueError(
        f"batch_size {batch_size} does not split over {self.process_count} processes x {num_microbatches} microbatches"
      )
    self.per_process = batch_size // self.process_count
    self.rows_per_microbatch = rows_per_microbatch or 2 * self.per_process // num_microbatches
    self.trim_rows: int | None = None
    self.answer_positions = 0
    self.epoch, self.index = 0, 0

  def _order(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))

  def next_indices(self) -> list[int]:
    indices = []
    order = self._order(self.epoch)
    while len(indices) < self.batch_size:
      if self.index >= len(order):
        self.epoch, self.index = self.epoch + 1, 0
        order = self._order(self.epoch)
      indices.append(int(order[self.index]))
      self.index += 1
    return indices

  def _share(self, indices: list[int], process: int) -> list[int]:
    return indices[process * self.per_process : (process + 1) * self.per_process]

  def needs_for_steps(self, num_steps: int) -> tuple[int, int]:
    """(rows per microbatch, answer positions a row) that the first `num_steps` batches need at
    most (on any process): each batch laid out once."""
    state = self.get_state()
    self.set_state({"epoch": 0, "index": 0})
    rows = answers = 1
    for _ in range(num_steps):
      indices = self.next_indices()
      for process in range(self.process_count):
        share_rows, share_answers = self.layout.needs(self.pairs, self._share(indices, process), self.num_microbatches)
        rows, answers = max(rows, share_rows), max(answers, share_answers)
    self.set_state(state)
    return rows, answers

  def rows_of(self, indices: list[int]) -> int:
    """Rows per microbatch of the batch of `indices` (see the class)."""
    if not self.trim_rows:
      return self.rows_per_microbatch
    shares = (self._share(indices, process) for process in range(self.process_count))
    need = max(self.layout.rows_needed(self.pairs, share, self.num_microbatches) for share in shares)
    return min(self.rows_per_microbatch, -(-need // self.trim_rows) * self.trim_rows)

  def __next__(self) -> dict:
    indices = self.next_indices()
    mine = self._share(indices, self.process_index)
    per_microbatch = self.per_process // self.num_microbatches
    return make_pair_batch(
      self.pairs,
      mine,
      self.layout,
      self.rows_of(indices),
      num_microbatches=self.num_microbatches,
      first_slot=self.process_index * per_microbatch,
      slots_per_microbatch=self.batch_size // self.num_microbatches,
      reference=self.reference,
      answer_positions=self.answer_positions,
    )

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "index": self.index}

  def set_state(self, state: dict) -> None:
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
