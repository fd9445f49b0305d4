"""Batched generation on the host side: padding and buckets, n samples, stop strings, refills.

`generate` turns token-id prompts into `Generation`s through `sampler`; prompt length and
batch are padded to a few bucket sizes so a run compiles a bounded number of times. With more
rows than a batch holds, the batch is refilled (continuous batching): whenever an eighth of its
rows have finished, the next prompts are prefilled into them while the others go on decoding,
so no row waits idle for the batch's longest answer. A prefix that every prompt shares (a chat
template's system turn and an instruction, say) is prefilled once per call and copied into each
row's cache; of the rest, each distinct prompt that a prefill meets is prefilled once, the rows
that share it (a prompt's samples) copying its cache. Rows finish, and reach `on_batch`, in the
order they end. On a multi-process run every process passes the same prompts; each fills its
own shards of the batch, every process gets every row's output back and makes the same refills.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from srit_jax import io, sharding
from srit_jax.generation import sampler
from srit_jax.generation.next_token import SamplingSettings
from srit_jax.generation.stop_strings import cut_at_stop_strings, stop_token_sequences, stop_token_table
from srit_jax.model.config import ModelConfig

STOP_REASONS = {sampler.STOP_LENGTH: "length", sampler.STOP_EOS: "eos", sampler.STOP_SEQUENCE: "stop"}
MIN_PROMPT_BUCKET = 16
REFILL_SHARE = 8  # a batch takes new prompts once this fraction (1/8) of its rows are free
MIN_SHARED_PREFIX = 16  # tokens: a shorter prefix common to every prompt is prefilled with each row


@dataclasses.dataclass(frozen=True)
class Generation:
  prompt_index: int
  sample_index: int
  seed: int
  tokens: list[int]  # new tokens, the EOS included when it stopped the row
  logprobs: list[float]  # model log-probability of each new token
  stop_reason: str  # "eos", "stop" (a stop string) or "length"
  text: str | None = None  # decoded text, cut before any stop string


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [B, W], mask [B, W]) with every prompt right-aligned."""
  if not prompts:
    raise ValueError("no prompts to generate from")
  if any(len(p) == 0 for p in prompts):
    raise ValueError(f"prompt {next(i for i, p in enumerate(prompts) if len(p) == 0)} is empty")
  width = width or max(len(p) for p in prompts)
  tokens = np.full((len(prompts), width), pad_id, np.int32)
  mask = np.zeros((len(prompts), width), np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, width - len(prompt) :] = prompt
    mask[row, width - len(prompt) :] = 1
  return tokens, mask


def prompt_bucket(length: int, limit: int) -> int:
  """The padded prompt length: 16 for the shortest prompts, else the next multiple of 32.

  Capped at `limit`. A run compiles once per bucket it meets, so a few times for a dataset
  whose prompts run in order of length, and pads no prompt by more than 31 tokens.
  """
  bucket = MIN_PROMPT_BUCKET if length <= MIN_PROMPT_BUCKET else -(-length // 32) * 32
  return min(bucket, limit)


def shared_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
  """How many leading tokens every prompt shares, leaving each at least one of its own; 0 for a
  single prompt or under MIN_SHARED_PREFIX tokens (nothing gained by a separate prefill)."""
  if len(prompts) < 2:
    return 0
  first, length = prompts[0], min(len(p) for p in prompts) - 1
  for prompt in prompts[1:]:
    same = 0
    while same < length and prompt[same] == first[same]:
      same += 1
    length = same
  return length if length >= MIN_SHARED_PREFIX else 0


def power_of_two_holding(count: int) -> int:
  """The smallest power of two not under `count` (1 for 1, 4 for 3, 16 for 9)."""
  return 1 << (count - 1).bit_length()


def distinct_prompts(
  prompts: Sequence[Sequence[int]], size: int, multiple: int = 1
) -> tuple[list[list[int]], np.ndarray, int] | None:
  """(the distinct prompts, the index of each of `size` rows' prompt among them, how many rows
  to prefill) for a prefill of `prompts` into `size` rows (the rows past them idle), where rows
  repeat prompts (a prompt's samples): each distinct prompt is prefilled once and its rows copy
  it. The prefilled rows are the distinct prompts padded with empty ones (the idle rows take an
  empty one) to a power of two that `multiple` divides, so that the prefill's shapes repeat;
  None where no prompt repeats (idle rows alone are not worth another program) or that leaves
  as many rows to prefill as `size`."""
  first: dict[tuple[int, ...], int] = {}
  for prompt in prompts:
    first.setdefault(tuple(prompt), len(first))
  if len(first) == len(prompts):
    return None
  needed = len(first) + (len(prompts) < size)
  count = -(-power_of_two_holding(needed) // multiple) * multiple
  if count >= size:
    return None
  source = [first[tuple(prompt)] for prompt in prompts] + [len(first)] * (size - len(prompts))
  return [list(prompt) for prompt in first], np.asarray(source, np.int32), count


def _shared_prefix(config, params, adapters, mesh, rows: Sequence[Row]):
  """The cache of the prefix every row's prompt shares, prefilled once (`sampler.prefix_cache`);
  None where `shared_prefix_length` finds none worth it."""
  length = shared_prefix_length([row.prompt for row in rows])
  if not length:
    return None
  tokens = np.asarray([rows[0].prompt[:length]], np.int32)
  if mesh is not None:  # every process holds the whole row
    tokens = sharding.put_host_array(tokens, sharding.logical_sharding((None, None), tokens.shape, mesh))
  return sampler.prefix_cache(config, params, tokens, adapters=adapters)


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
  """A row's seed from the run seed and its (prompt, sample) indices, independent of batching."""
  return int(np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclasses.dataclass(frozen=True)
class Row:
  """One generation to make: sample `sample_index` of prompt `prompt_index`."""

  prompt_index: int
  sample_index: int
  prompt: Sequence[int]


def generate(
  config: ModelConfig,
  params,
  prompts: Sequence[Sequence[int]],
  *,
  num_samples: int = 1,
  prompt_indices: Sequence[int] | None = None,
  **options,
) -> list[Generation]:
  """`num_samples` generations per prompt, in prompt order then sample order.

  `prompt_indices` name the prompts (default 0, 1, ...); `options` are those of `generate_rows`.
  """
  indices = list(prompt_indices) if prompt_indices is not None else list(range(len(prompts)))
  rows = [Row(indices[i], s, prompts[i]) for i in range(len(prompts)) for s in range(num_samples)]
  return generate_rows(config, params, rows, **options)


def generate_rows(
  config: ModelConfig,
  params,
  rows: Sequence[Row],
  *,
  max_new_tokens: int,
  settings: SamplingSettings | None = None,
  seed: int = 0,
  batch_size: int | None = None,
  refill: bool = True,
  eos_ids: Sequence[int] | None = None,
  stop_strings: Sequence[str] = (),
  tokenizer=None,
  mesh: Mesh | None = None,
  on_batch: Callable[[list[Generation]], None] | None = None,
  adapters=None,
  share_prefix: bool = True,
) -> list[Generation]:
  """A generation per row, returned in the order of `rows`.

  Rows run in a batch of `batch_size` (default: all rows at once, in the power of two that
  holds them: 3 rows decode in 4, 9 in 16; calls with other numbers of rows compile once per
  power of two they meet). With more rows than that, the batch is refilled as its rows finish
  (`refill=False`: one batch after another, each decoding until its longest answer ends); a
  short batch is padded with idle rows so its shape repeats. `on_batch` gets each group of
  finished rows as they end. A row's tokens depend on its seed (from `seed` and its indices), not on the rows
  it shares a batch with. `adapters`: LoRA adapters over `params` (the base). `share_prefix`:
  prefill the prefix every prompt shares once per call, and a prompt that several rows of a
  prefill repeat once (the outputs are the same either way, up to floating-point rounding).
  """
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
  if not rows:
    raise ValueError("no prompts to generate from")
  if stop_strings and tokenizer is None:
    raise ValueError("stop_strings need a tokenizer")
  limit = config.max_position_embeddings - max_new_tokens
  for row in rows:
    if len(row.prompt) == 0:
      raise ValueError(f"prompt {row.prompt_index} is empty")
    if len(row.prompt) > limit:
      raise ValueError(
        f"prompt {row.prompt_index} has {len(row.prompt)} tokens; with max_new_tokens={max_new_tokens} the "
        f"context of {config.max_position_embeddings} leaves room for {limit}"
      )
  batch_size = batch_size or power_of_two_holding(len(rows))
  shards = mesh.shape["data"] * mesh.shape["fsdp"] if mesh is not None else 1
  batch_size = -(-batch_size // shards) * shards  # the batch must split evenly over the mesh's batch axes
  decoder = _Decoder(
    shards,
    config,
    params,
    adapters,
    mesh,
    settings or SamplingSettings(),
    max_new_tokens,
    seed,
    limit,
    eos=np.asarray(tuple(config.eos_token_ids if eos_ids is None else eos_ids) or (-1,), np.int32),
    stops=stop_token_table(stop_token_sequences(tokenizer, stop_strings) if stop_strings else []),
    tokenizer=tokenizer,
    stop_strings=tuple(stop_strings),
    prefix=_shared_prefix(config, params, adapters, mesh, rows) if share_prefix else None,
    share_prompts=share_prefix,
  )
  report = on_batch or (lambda generations: None)
  if refill and len(rows) > batch_size:
    refill_rows = -(-max(1, batch_size // REFILL_SHARE) // shards) * shards
    results = decoder.refilled(rows, batch_size, refill_rows, report)
  else:
    results = decoder.batches(rows, batch_size, report)
  order = {(row.prompt_index, row.sample_index): n for n, row in enumerate(rows)}
  return sorted(results, key=lambda g: order[g.prompt_index, g.sample_index])


@dataclasses.dataclass
class _Decoder:
  """Runs rows through `sampler`'s programs; what stays fixed over one `generate_rows` call."""

  shards: int  # the batch's shards on the mesh (1 without one)
  config: ModelConfig
  params: object
  adapters: object
  mesh: Mesh | None
  settings: SamplingSettings
  max_new_tokens: int
  seed: int
  limit: int  # the longest prompt the context leaves room for
  eos: np.ndarray
  stops: np.ndarray
  tokenizer: object
  stop_strings: tuple[str, ...]
  prefix: object = None  # the cache of the leading tokens every prompt shares (`_shared_prefix`)
  share_prompts: bool = True  # a prompt that several rows of a prefill repeat is prefilled once

  @property
  def prefix_length(self) -> int:
    return sampler.prefix_length(self.prefix)

  def _width(self, rows: Sequence[Row]) -> int:
    """The prompt bucket of `rows`' own tokens (after the shared prefix)."""
    return prompt_bucket(max(len(row.prompt) for row in rows) - self.prefix_length, self.limit - self.prefix_length)

  def _inputs(self, rows: Sequence[Row], size: int) -> tuple:
    """(tokens, mask, seeds, source) of `rows` (after the shared prefix) plus idle rows up to
    `size`: the prompts left-padded to a prompt bucket, each distinct one once where rows repeat
    them (`distinct_prompts`; source: each row's prompt among them, else None); on a mesh, each
    process fills the shards it holds."""
    own = [row.prompt[self.prefix_length :] for row in rows]
    distinct = distinct_prompts(own, size, self.shards) if self.share_prompts else None
    prompts, source, count = distinct or (own, None, size)
    tokens, mask = left_pad(prompts, self.config.pad_token_id or 0, self._width(rows))
    seeds = [row_seed(self.seed, row.prompt_index, row.sample_index) for row in rows] + [0] * (size - len(rows))
    empty = ((0, count - len(prompts)), (0, 0))
    arrays = (np.pad(tokens, empty), np.pad(mask, empty), np.asarray(seeds, np.int32), source)
    if self.mesh is None:
      return arrays
    on_mesh = lambda a: sharding.put_host_array(
      a, sharding.logical_sharding(("batch",) + (None,) * (a.ndim - 1), a.shape, self.mesh)
    )
    return tuple(a if a is None else on_mesh(a) for a in arrays)

  def _generation(self, row: Row, tokens_N, logprobs_N, reason: int) -> Generation:
    """A finished row's output, cut at its first stop string."""
    length = int((tokens_N >= 0).sum())
    tokens, logprobs = tokens_N[:length].tolist(), logprobs_N[:length].tolist()
    stop_reason, text = STOP_REASONS[int(reason)], None
    if self.tokenizer is not None:
      tokens, logprobs, text, stopped = cut_at_stop_strings(self.tokenizer, tokens, logprobs, self.stop_strings)
      stop_reason = "stop" if stopped else ("length" if stop_reason == "stop" else stop_reason)
    seed = row_seed(self.seed, row.prompt_index, row.sample_index)
    return Generation(row.prompt_index, row.sample_index, seed, tokens, logprobs, stop_reason, text)

  def batches(self, rows: Sequence[Row], batch_size: int, report) -> list[Generation]:
    """One batch after another, each decoding until all its rows are done."""
    results = []
    for start in range(0, len(rows), batch_size):
      chunk = rows[start : start + batch_size]
      tokens, mask, seeds, source = self._inputs(chunk, batch_size)
      outputs = sampler.sample(
        self.config,
        self.params,
        tokens,
        mask,
        seeds,
        jnp.asarray(self.eos),
        jnp.asarray(self.stops),
        settings=self.settings,
        max_new_tokens=self.max_new_tokens,
        mesh=self.mesh,
        adapters=self.adapters,
        prefix=self.prefix,
        source_B=source,
      )
      out, logprobs, reasons = (io.to_host(x) for x in outputs)  # every row, on every process
      finished = [self._generation(row, out[n], logprobs[n], reasons[n]) for n, row in enumerate(chunk)]
      report(finished)
      results.extend(finished)
    return results

  def refilled(self, rows: Sequence[Row], batch_size: int, refill_rows: int, report) -> list[Generation]:
    """One batch whose finished rows take the next rows, `refill_rows` at a time.

    The cache holds the longest prompt bucket and every new token; each row keeps its own end.
    """
    model = dict(mesh=self.mesh, adapters=self.adapters)
    cache_length = self.prefix_length + self._width(rows) + self.max_new_tokens
    held: list[Row | None] = list(rows[:batch_size])  # the row each batch slot decodes
    pending = collections.deque(rows[batch_size:])
    tokens, mask, seeds, source = self._inputs(held, batch_size)
    state = sampler.start(
      self.config,
      self.params,
      tokens,
      mask,
      seeds,
      cache_length=cache_length,
      stop_len=self.stops.shape[1],
      max_new_tokens=self.max_new_tokens,
      prefix=self.prefix,
      source_B=source,
      **model,
    )
    eos, stops = jnp.asarray(self.eos), jnp.asarray(self.stops)
    results = []
    while any(row is not None for row in held):
      free = sum(row is None for row in held)
      wanted = free + min(refill_rows, len(pending)) if pending else batch_size
      state = sampler.advance(
        self.config,
        self.params,
        state,
        eos,
        stops,
        jnp.int32(wanted),
        settings=self.settings,
        max_new_tokens=self.max_new_tokens,
        **model,
      )
      done, out, logprobs, reasons = (
        io.to_host(x) for x in (state.done_B, state.out_BxN, state.logprobs_BxN, state.reason_B)
      )
      out = out[:, self.stops.shape[1] :]
      finished = []
      for slot, row in enumerate(held):
        if row is not None and done[slot]:
          finished.append(self._generation(row, out[slot], logprobs[slot], reasons[slot]))
          held[slot] = None
      report(finished)
      results.extend(finished)
      free_slots = [slot for slot, row in enumerate(held) if row is None]
      while pending and len(free_slots) >= min(refill_rows, len(pending)):
        group = [pending.popleft() for _ in range(min(refill_rows, len(pending)))]
        slots, free_slots = free_slots[: len(group)], free_slots[len(group) :]
        for slot, row in zip(slots, group):
          held[slot] = row
        where = np.asarray(slots + [batch_size] * (refill_rows - len(group)), np.int32)  # B: no row
        tokens, mask, seeds, source = self._inputs(group, refill_rows)
        state = sampler.insert(
          self.config,
          self.params,
          state,
          jnp.asarray(where),
          tokens,
          mask,
          seeds,
          prefix=self.prefix,
          source_G=source,
          **model,
        )
    return results


def greedy_generate(config, params, prompts, max_new_tokens, *, eos_ids=None, mesh=None) -> list[list[int]]:
  """New token ids per prompt under greedy decoding, up to and including the first EOS."""
  generations = generate(config, params, prompts, max_new_tokens=max_new_tokens, eos_ids=eos_ids, mesh=mesh)
  return [g.tokens for g in generations]
