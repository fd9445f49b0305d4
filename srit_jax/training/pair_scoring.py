"""The summed answer log-probs of a fixed list of preference pairs under any parameters: the
frozen reference's once before DPO, the policy's on held-out pairs. Batches are laid out like
training batches (srit_jax/data/pair_batches.py); the reference pass is kept on disk, batch by
batch, so that a preempted pass goes on where it stopped and a rerun reads it whole.
"""

from __future__ import annotations

import pathlib
import time
from io import BytesIO

import jax
import numpy as np
import tqdm

from srit_jax import io, preemption, sharding
from srit_jax.data import pair_batches
from srit_jax.training import dpo_step


def row_multiple(mesh) -> int:
  """Rows per microbatch of one process split evenly over its devices along the batch axes."""
  batch_devices = mesh.shape["data"] * mesh.shape["fsdp"]
  return max(1, batch_devices // jax.process_count())


def round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


class PairScorer:
  """(chosen, rejected) summed answer log-probs of a fixed list of pairs under any parameters:
  the reference's once, the policy's on held-out pairs. Batches of `batch_size` pairs, laid out
  like training batches, with the most rows and answer positions any of them needs (one
  compilation)."""

  def __init__(self, pairs, layout: pair_batches.PairLayout, model_config, mesh, batch_size: int, chunk_size: int):
    self.pairs, self.layout, self.mesh, self.batch_size = pairs, layout, mesh, batch_size
    self.per_process = batch_size // jax.process_count()
    self.chunks = [list(range(s, min(s + batch_size, len(pairs)))) for s in range(0, len(pairs), batch_size)]
    processes = range(jax.process_count())
    shares = [
      self._padded(c)[p * self.per_process : (p + 1) * self.per_process] for c in self.chunks for p in processes
    ]
    needs = [layout.needs(pairs, share) for share in shares] or [(1, 1)]
    self.rows = round_up(max(rows for rows, _ in needs), row_multiple(mesh))
    most_answers = max(answers for _, answers in needs)
    self.answer_positions = pair_batches.answer_positions_per_row(most_answers, layout.row_length)
    self._log_probs = jax.jit(
      lambda params, batch, base: dpo_step.pair_log_probs(
        model_config, params, batch, mesh=mesh, chunk_size=chunk_size, base=base
      )
    )

  def _padded(self, indices: list[int]) -> list[int]:
    return indices + [indices[0]] * (self.batch_size - len(indices))  # whole batches: one compilation

  def __call__(self, params, base=None, *, desc: str | None = None, done=((), ()), on_batch=None):
    """Per-pair (chosen, rejected) log-prob sums, going on after `done` (the sums of a pass's
    first whole batches); `on_batch(chosen, rejected)` gets the sums so far after each batch.
    With `desc`, a progress bar of that name."""
    chosen, rejected = [np.asarray(done[0], np.float32)], [np.asarray(done[1], np.float32)]
    finished = -(-len(chosen[0]) // self.batch_size)
    if len(chosen[0]) != min(finished * self.batch_size, len(self.pairs)):
      raise ValueError(f"{len(chosen[0])} pairs done is not a whole number of batches of {self.batch_size}")
    process = jax.process_index()
    hidden = desc is None or process != 0
    with tqdm.tqdm(total=len(self.chunks), initial=finished, desc=desc, unit="batch", disable=hidden) as bar:
      for indices in self.chunks[finished:]:
        mine = self._padded(indices)[process * self.per_process : (process + 1) * self.per_process]
        local = pair_batches.make_pair_batch(
          self.pairs,
          mine,
          self.layout,
          self.rows,
          first_slot=process * self.per_process,
          slots_per_microbatch=self.batch_size,
          answer_positions=self.answer_positions,
        )
        both = self._log_probs(params, sharding.shard_rows(local, self.mesh), base)
        chosen.append(io.to_host(both[0])[: len(indices)])
        rejected.append(io.to_host(both[1])[: len(indices)])
        bar.update()
        if on_batch is not None:
          on_batch(np.concatenate(chosen), np.concatenate(rejected))
    return np.concatenate(chosen), np.concatenate(rejected)


KEEP_EVERY_S = 60.0  # how often a log-prob pass keeps its finished batches (and at a preemption)


def _saved(path: pathlib.Path, key: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(chosen, rejected) saved in `path` for `key` (pairs and model), or None."""
  if not path.exists():
    return None
  saved = np.load(BytesIO(path.read_bytes()))
  return (saved["chosen"], saved["rejected"]) if str(saved["key"]) == key else None


def _save(path: pathlib.Path, key: str, chosen: np.ndarray, rejected: np.ndarray) -> None:
  arrays = BytesIO()
  np.savez(arrays, key=key, chosen=chosen, rejected=rejected)
  io.write_bytes(path, arrays.getvalue())


def cached_log_probs(path: pathlib.Path, key: str, scorer: PairScorer, params, base, *, desc=None, made_elsewhere=()):
  """`scorer`'s log-prob sums under `params`, read from `path` when made for `key`, else
  computed and saved there. A pass in progress keeps its finished batches in PATH.so_far.npz
  every KEEP_EVERY_S and at a preemption notice (then raises Preempted); a rerun goes on from them.
  `made_elsewhere`: other runs' folders; a file of `path`'s name there made for `key` is taken
  over (a hard link) rather than computed."""
  saved = _saved(path, key)
  if saved is not None:
    return saved
  for other in (io.as_path(folder) / path.name for folder in made_elsewhere):
    if (saved := _saved(other, key)) is not None:
      io.link_files(other.parent, path.parent, (other.name,))
      print(f"{path}: taken over from {other}, made from the same model and pairs")
      return saved
  so_far = path.with_name(path.name.removesuffix(".npz") + ".so_far.npz")
  so_far_key = f"{key} in batches of {scorer.batch_size}"  # whole batches of this pass's size
  done = _saved(so_far, so_far_key) or ((), ())
  kept_at = time.monotonic()

  def keep(chosen, rejected):
    nonlocal kept_at
    stop = preemption.requested()  # a safe point of every process, after each batch
    if stop or time.monotonic() - kept_at > KEEP_EVERY_S:
      _save(so_far, so_far_key, chosen, rejected)
      kept_at = time.monotonic()
    if stop:
      io.barrier(f"wrote {so_far}")
      raise preemption.Preempted(
        f"preempted: the log-probs of {len(chosen)} of {len(scorer.pairs)} pairs are kept in {so_far}; "
        "run the same command again to go on from there"
      )

  chosen, rejected = scorer(params, base, desc=desc, done=done, on_batch=keep)
  _save(path, key, chosen, rejected)
  io.barrier(f"wrote {path}")
  if io.is_writer():
    so_far.unlink(missing_ok=True)
  return chosen, rejected
