"""A deterministic, checkpointable iterator of packed training batches.

Each epoch visits the examples in a permutation drawn from (seed, epoch). A batch takes the
next examples in that order and packs them into `batch_size` rows of `row_length` positions
(next-fit: an example that does not fit the current row starts the next; one that fits no
row left waits for the next batch). The whole state is (epoch, index), saved with every
checkpoint, so a resumed run sees exactly the batches an uninterrupted one would. On a
multi-host run each process builds the same global batch and keeps its own block of rows.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from srit_jax.data import sft_examples as sft_data


@dataclasses.dataclass
class IteratorState:
  epoch: int = 0
  index: int = 0  # position in this epoch's permutation of the next example to use


class PackedBatchIterator:
  def __init__(
    self,
    examples: list[sft_data.TokenizedExample],
    *,
    batch_size: int,
    row_length: int,
    seed: int,
    pack: bool = True,
    normalization: str = "token",
    shuffle: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    if not examples:
      raise ValueError("no training examples")
    self.examples = examples
    self.batch_size = batch_size
    self.row_length = row_length
    self.seed = seed
    self.pack = pack
    self.normalization = normalization
    self.shuffle = shuffle
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    if batch_size % self.process_count:
      raise ValueError(f"batch_size {batch_size} does not split over {self.process_count} processes")
    self.state = IteratorState()
    self._cached_order: tuple[int, np.ndarray] | None = None

  def _order(self, epoch: int) -> np.ndarray:
    """This epoch's visiting order, drawn once per epoch."""
    if self._cached_order is None or self._cached_order[0] != epoch:
      order = np.arange(len(self.examples))
      if self.shuffle:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))
      self._cached_order = (epoch, order)
    return self._cached_order[1]

  def next_global_batch(self) -> sft_data.Batch:
    """The next batch of all processes' rows; advances the state."""
    return sft_data.make_batch(self.examples, self._next_rows(), self.row_length, self.normalization)

  def steps_for_epochs(self, epochs: float) -> int:
    """How many batches, from the start, pass over the examples `epochs` times (the last one may
    run into the next pass); the iterator's own state is left as it was."""
    kept, self.state = self.state, IteratorState()
    steps, target = 0, epochs * len(self.examples)
    try:
      while self.state.epoch * len(self.examples) + self.state.index < target:
        self._next_rows()
        steps += 1
    finally:
      self.state = kept
    return max(steps, 1)

  def _next_rows(self) -> list[list[int]]:
    """The example indices of each row of the next batch; advances the state."""
    rows: list[list[int]] = [[]]
    used = 0
    while True:
      order = self._order(self.state.epoch)
      if self.state.index >= len(order):
        self.state = IteratorState(self.state.epoch + 1, 0)
        continue
      example_index = int(order[self.state.index])
      need = len(self.examples[example_index].tokens) - 1
      if need > self.row_length:
        raise ValueError(f"example {example_index} needs {need} positions, more than row_length {self.row_length}")
      if rows[-1] and (not self.pack or used + need > self.row_length):
        if len(rows) == self.batch_size:
          break
        rows.append([])
        used = 0
      rows[-1].append(example_index)
      used += need
      self.state.index += 1
    return rows

  def __next__(self) -> sft_data.Batch:
    """This process's rows of the next global batch."""
    batch = self.next_global_batch()
    per_process = self.batch_size // self.process_count
    rows = slice(self.process_index * per_process, (self.process_index + 1) * per_process)
    return sft_data.Batch(**{k: v[rows] for k, v in batch.as_dict().items()})

  def __iter__(self):
    return self

  def get_state(self) -> dict:
    return dataclasses.asdict(self.state)

  def set_state(self, state: dict) -> None:
    self.state = IteratorState(**state)
