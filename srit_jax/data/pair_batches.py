"""Preference pairs as token ids and batches: each side (chosen, rejected) of a pair is one row,
the prompt rendered through the chat template as in SFT, loss weight on answer tokens only."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from srit_jax.data import sft_examples as sft_data


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
  chosen: sft_data.TokenizedExample
  rejected: sft_data.TokenizedExample


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


def make_pair_batch(pairs: Sequence[TokenizedPair], indices: Sequence[int], row_length: int, reference=None) -> dict:
  """{"chosen": side, "rejected": side} for the given pairs (+ their precomputed reference log-probs)."""
  rows = [[i] for i in range(len(indices))]
  batch = {
    "chosen": sft_data.make_batch([pairs[i].chosen for i in indices], rows, row_length).as_dict(),
    "rejected": sft_data.make_batch([pairs[i].rejected for i in indices], rows, row_length).as_dict(),
  }
  if reference is not None:
    batch["ref_chosen_logps"] = reference[0][np.asarray(indices)]
    batch["ref_rejected_logps"] = reference[1][np.asarray(indices)]
  return batch


class PairBatchIterator:
  """Seeded per-epoch shuffling of pairs, `batch_size` pairs per batch; state (epoch, index)
  saved with each checkpoint; each process keeps its block of the global batch."""

  def __init__(
    self, pairs, *, batch_size: int, row_length: int, seed: int, reference=None, process_index=None, process_count=None
  ):
    if not pairs:
      raise ValueError("no preference pairs to train on")
    self.pairs, self.batch_size, self.row_length, self.seed = pairs, batch_size, row_length, seed
    self.reference = reference
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if batch_size % self.process_count:
      raise ValueError(f"batch_size {batch_size} does not split over {self.process_count} processes")
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

  def __next__(self) -> dict:
    indices = self.next_indices()
    per_process = self.batch_size // self.process_count
    mine = indices[self.process_index * per_process : (self.process_index + 1) * per_process]
    return make_pair_batch(self.pairs, mine, self.row_length, self.reference)

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "index": self.index}

  def set_state(self, state: dict) -> None:
    self.epoch, self.index = int(state["epoch"]), int(state["index"])
