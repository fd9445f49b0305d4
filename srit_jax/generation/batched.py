"""Batched generation on the host side: padding and buckets, n samples, stop strings, JSONL runs.

`generate` turns token-id prompts into `Generation`s through `sampler.sample`; prompt
length and batch are padded to a few bucket sizes so a run compiles a bounded number of
times. On a multi-process run every process passes the same prompts; each fills its own
shards of the batch and every process gets every row's output back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from srit_jax import io, sharding
from srit_jax.generation import sampler
from srit_jax.generation.sampler import SamplingSettings
from srit_jax.model.config import ModelConfig

STOP_REASONS = {sampler.STOP_LENGTH: "length", sampler.STOP_EOS: "eos", sampler.STOP_SEQUENCE: "stop"}
MIN_PROMPT_BUCKET = 16


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


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
  """A row's seed from the run seed and its (prompt, sample) indices, independent of batching."""
  return int(np.random.SeedSequence([seed, prompt_index, sample_index]).generate_state(1)[0] & 0x7FFFFFFF)


def _stop_token_table(stop_token_sequences: Sequence[Sequence[int]]) -> np.ndarray:
  """[M, Q] right-aligned stop sequences padded with -1 (a single never-matching row if none)."""
  sequences = [list(s) for s in stop_token_sequences if len(s)]
  if not sequences:
    return np.full((1, 1), -1, np.int32)
  width = max(len(s) for s in sequences)
  table = np.full((len(sequences), width), -1, np.int32)
  for row, seq in enumerate(sequences):
    table[row, width - len(seq) :] = seq
  return table


def stop_token_sequences(tokenizer, stop_strings: Sequence[str]) -> list[list[int]]:
  """Token sequences that end generation early on device; the text cut on the host is exact."""
  sequences = []
  for stop in stop_strings:
    for variant in (stop, " " + stop):
      ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
      if ids and ids not in sequences:
        sequences.append(ids)
  return sequences


def cut_at_stop_strings(tokenizer, tokens: list[int], logprobs: list[float], stop_strings: Sequence[str]):
  """(tokens, logprobs, text, stopped): the shortest token prefix whose text holds a stop string."""
  text = tokenizer.decode(tokens, skip_special_tokens=True)
  positions = [text.find(s) for s in stop_strings if s and s in text]
  if not positions:
    return tokens, logprobs, text, False
  cut = min(positions)
  for n in range(1, len(tokens) + 1):
    if len(tokenizer.decode(tokens[:n], skip_special_tokens=True)) > cut:
      return tokens[:n], logprobs[:n], text[:cut], True
  return tokens, logprobs, text[:cut], True


def generate(
  config: ModelConfig,
  params,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  settings: SamplingSettings | None = None,
  num_samples: int = 1,
  seed: int = 0,
  batch_size: int | None = None,
  eos_ids: Sequence[int] | None = None,
  stop_strings: Sequence[str] = (),
  tokenizer=None,
  mesh: Mesh | None = None,
  prompt_indices: Sequence[int] | None = None,
  on_batch: Callable[[list[Generation]], None] | None = None,
  adapters=None,
) -> list[Generation]:
  """`num_samples` generations per prompt, in prompt order then sample order.

  Rows are run in batches of `batch_size` (default: all rows at once, rounded up to a power
  of two); a final short batch is padded with idle rows so its shape repeats. `adapters`:
  LoRA adapters over `params` (the base).
  """
  settings = settings or SamplingSettings()
  if max_new_tokens <= 0:
    raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
  if not prompts:
    raise ValueError("no prompts to generate from")
  if stop_strings and tokenizer is None:
    raise ValueError("stop_strings need a tokenizer")
  limit = config.max_position_embeddings - max_new_tokens
  for i, prompt in enumerate(prompts):
    if len(prompt) == 0:
      raise ValueError(f"prompt {i} is empty")
    if len(prompt) > limit:
      raise ValueError(
        f"prompt {i} has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} the context of "
        f"{config.max_position_embeddings} leaves room for {limit}"
      )
  indices = list(prompt_indices) if prompt_indices is not None else list(range(len(prompts)))
  rows = [(indices[i], s, prompts[i]) for i in range(len(prompts)) for s in range(num_samples)]
  batch_size = batch_size or prompt_bucket(len(rows), 1 << 30)
  if mesh is not None:  # the batch must split evenly over the mesh's batch axes
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = -(-batch_size // shards) * shards
  eos = np.asarray(tuple(config.eos_token_ids if eos_ids is None else eos_ids) or (-1,), np.int32)
  stops = _stop_token_table(stop_token_sequences(tokenizer, stop_strings) if stop_strings else [])
  results = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start : start + batch_size]
    width = prompt_bucket(max(len(p) for _, _, p in chunk), limit)
    tokens, mask = left_pad([p for _, _, p in chunk], config.pad_token_id or 0, width)
    idle = batch_size - len(chunk)
    tokens = np.pad(tokens, ((0, idle), (0, 0)))
    mask = np.pad(mask, ((0, idle), (0, 0)))
    seeds = np.asarray([row_seed(seed, p, s) for p, s, _ in chunk] + [0] * idle, np.int32)
    args = [tokens, mask, seeds]
    if mesh is not None:  # each process fills the shards it holds
      args = [
        sharding.put_host_array(a, sharding.logical_sharding(("batch",) + (None,) * (a.ndim - 1), a.shape, mesh))
        for a in args
      ]
    outputs = sampler.sample(
      config,
      params,
      *args,
      jnp.asarray(eos),
      jnp.asarray(stops),
      settings=settings,
      max_new_tokens=max_new_tokens,
      mesh=mesh,
      adapters=adapters,
    )
    out, logprobs, reasons = (io.to_host(x) for x in outputs)  # every row, on every process
    batch_results = []
    for row, (prompt_index, sample_index, _) in enumerate(chunk):
      length = int((out[row] >= 0).sum())
      new_tokens = out[row, :length].tolist()
      new_logprobs = logprobs[row, :length].tolist()
      reason = STOP_REASONS[int(reasons[row])]
      text = None
      if tokenizer is not None:
        new_tokens, new_logprobs, text, stopped = cut_at_stop_strings(tokenizer, new_tokens, new_logprobs, stop_strings)
        reason = "stop" if stopped else ("length" if reason == "stop" else reason)
      batch_results.append(
        Generation(prompt_index, sample_index, int(seeds[row]), new_tokens, new_logprobs, reason, text)
      )
    if on_batch is not None:
      on_batch(batch_results)
    results.extend(batch_results)
  return results


def greedy_generate(config, params, prompts, max_new_tokens, *, eos_ids=None, mesh=None) -> list[list[int]]:
  """New token ids per prompt under greedy decoding, up to and including the first EOS."""
  generations = generate(config, params, prompts, max_new_tokens=max_new_tokens, eos_ids=eos_ids, mesh=mesh)
  return [g.tokens for g in generations]
