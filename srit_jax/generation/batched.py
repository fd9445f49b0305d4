"""Batched generation on the host side: padding and buckets, n samples, stop strings, JSONL runs.

`generate` turns token-id prompts into `Generation`s through `sampling.sample`; prompt
length and batch are padded to a few bucket sizes so a run compiles a bounded number of
times. `generate_to_jsonl` streams a dataset of prompts to a JSONL file in whole batches and
resumes a killed run where it stopped, with the same result as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import Mesh

from srit_jax import sharding
from srit_jax.generation import sampler as sampling
from srit_jax.generation.sampler import SamplingSettings
from srit_jax.model.config import ModelConfig

STOP_REASONS = {sampling.STOP_LENGTH: "length", sampling.STOP_EOS: "eos", sampling.STOP_SEQUENCE: "stop"}
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
) -> list[Generation]:
  """`num_samples` generations per prompt, in prompt order then sample order.

  Rows are run in batches of `batch_size` (default: all rows at once, rounded up to a power
  of two); a final short batch is padded with idle rows so its shape repeats.
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
    if mesh is not None:
      args = [
        jax.device_put(a, sharding.logical_sharding(("batch",) + (None,) * (a.ndim - 1), a.shape, mesh)) for a in args
      ]
    out, logprobs, reasons = jax.device_get(
      sampling.sample(
        config,
        params,
        *args,
        jnp.asarray(eos),
        jnp.asarray(stops),
        settings=settings,
        max_new_tokens=max_new_tokens,
        mesh=mesh,
      )
    )
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


# --- Streaming a dataset of prompts to JSONL ---------------------------------------------------


def _complete_lines(path: pathlib.Path) -> list[bytes]:
  """The newline-terminated lines of a file; a last line cut short by a kill is left out."""
  if not path.exists():
    return []
  return path.read_bytes().split(b"\n")[:-1]


def generate_to_jsonl(
  config: ModelConfig,
  params,
  tokenizer,
  records: Iterable[dict[str, Any]],
  out_path: str | pathlib.Path,
  *,
  max_new_tokens: int,
  settings: SamplingSettings | None = None,
  num_samples: int = 1,
  seed: int = 0,
  batch_size: int = 16,
  stop_strings: Sequence[str] = (),
  chat_template: bool = True,
  mesh: Mesh | None = None,
  progress: bool = True,
) -> pathlib.Path:
  """Generates for every record (`{"prompt": ..., "id": ...}`) and appends one line per sample.

  Prompts run in order of token length, in whole batches; each batch's lines are written and
  synced together. A restarted run keeps the whole batches already written, drops a batch cut
  short by a kill, and continues, so its file equals that of an uninterrupted run.
  """
  out_path = pathlib.Path(out_path)
  records = list(records)
  if not records:
    raise ValueError("no prompts to generate from")
  prompts = [encode_prompt(tokenizer, r, chat_template, where=f"record {i}") for i, r in enumerate(records)]
  order = sorted(range(len(records)), key=lambda i: (len(prompts[i]), i))
  rows_per_batch = max(1, batch_size // num_samples)
  batches = [order[i : i + rows_per_batch] for i in range(0, len(order), rows_per_batch)]

  lines = _complete_lines(out_path)
  done_batches, kept = 0, 0
  for batch in batches:
    if kept + len(batch) * num_samples > len(lines):
      break
    expected = [(i, s) for i in batch for s in range(num_samples)]
    written = [json.loads(line) for line in lines[kept : kept + len(batch) * num_samples]]
    if [(w["index"], w["sample"]) for w in written] != expected:
      raise ValueError(f"{out_path}: holds lines of another run (line {kept + 1} onward); move it away to start over")
    kept += len(batch) * num_samples
    done_batches += 1
  out_path.parent.mkdir(parents=True, exist_ok=True)
  with open(out_path, "a+b") as f:
    f.truncate(sum(len(line) + 1 for line in lines[:kept]))

  bar = tqdm.tqdm(
    total=len(records), initial=kept // num_samples, desc="generating", unit="prompt", disable=not progress
  )
  with open(out_path, "a", encoding="utf-8") as f:

    def write(generations: list[Generation]):
      for g in generations:
        record = records[g.prompt_index]
        line = {
          "index": g.prompt_index,
          "id": record.get("id", g.prompt_index),
          "sample": g.sample_index,
          "seed": g.seed,
          "prompt": record["prompt"],
          "completion": g.text,
          "stop_reason": g.stop_reason,
          "tokens": g.tokens,
          "logprobs": [round(x, 6) for x in g.logprobs],
        }
        f.write(json.dumps(line, ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
      bar.update(len(generations) // num_samples)

    for batch in batches[done_batches:]:
      generate(
        config,
        params,
        [prompts[i] for i in batch],
        max_new_tokens=max_new_tokens,
        settings=settings,
        num_samples=num_samples,
        seed=seed,
        batch_size=batch_size,
        stop_strings=stop_strings,
        tokenizer=tokenizer,
        mesh=mesh,
        prompt_indices=batch,
        on_batch=write,
      )
  bar.close()
  return out_path


def encode_prompt(tokenizer, record: dict[str, Any], chat_template: bool, where: str) -> list[int]:
  prompt = record.get("prompt")
  if not isinstance(prompt, str) or not prompt:
    raise ValueError(f"{where}: field 'prompt' must be a non-empty string, got {prompt!r}")
  if chat_template:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
  return tokenizer(prompt)["input_ids"]
