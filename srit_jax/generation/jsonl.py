"""Generation for a dataset of prompts, streamed to a JSONL file that a killed run resumes.

`generate_to_jsonl` writes one line per (prompt, sample), in the order the rows finish, a
batch's worth of finished rows at a time, flushed and synced (on object storage each batch is
composed onto the object's end); at a preemption every row finished so far is written. A restarted run
keeps every whole line already written, drops a line cut short by a kill and generates only
the rows still missing. A row's tokens depend on its seed alone, so the resumed file holds the
lines of an uninterrupted run (in another order). Beside the file, `<file>.meta.json` holds a
fingerprint of the model, prompts and settings: a run with other inputs never continues a file
made from different ones — it starts over, saying so, or (`on_change="error"`) stops and says
how to start over.

`generate_texts` is the generate-then-read-back step that evaluation, the student's
self-samples and the local teacher share: the completions per prompt and sample.

On a multi-process run every process generates every row (each on its own shards) and only
process 0 writes the file.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import tqdm
from jax.sharding import Mesh

from srit_jax import io, preemption
from srit_jax.data import fingerprint
from srit_jax.generation.batched import Generation, Row, generate_rows
from srit_jax.generation.next_token import SamplingSettings
from srit_jax.model.config import ModelConfig

ON_CHANGE = ("restart", "error")


class StaleOutputError(ValueError):
  """An output file was made from other inputs or settings than the run asks for."""


@dataclasses.dataclass(frozen=True)
class Completion:
  text: str  # the answer: the record's response prefix, then what the model generated
  stop_reason: str  # "eos", "stop" (a stop string) or "length" (cut by max_new_tokens)


def encode_prompt(tokenizer, record: dict[str, Any], chat_template: bool, where: str) -> list[int]:
  """Token ids of a record's "prompt" (through the chat template when asked), followed by its
  optional "response_prefix": the words the answer starts with, which generation continues.
  A record's optional "shots" (worked examples, each {"prompt", "answer"}) come first: earlier
  user and assistant turns through the chat template, or "prompt\nanswer\n\n" blocks of plain text."""
  prompt = record.get("prompt")
  if not isinstance(prompt, str) or not prompt:
    raise ValueError(f"{where}: field 'prompt' must be a non-empty string, got {prompt!r}")
  shots = record.get("shots") or []
  for i, shot in enumerate(shots):
    for field in ("prompt", "answer"):
      if not isinstance(shot, dict) or not isinstance(shot.get(field), str) or not shot[field]:
        raise ValueError(f"{where}: shots[{i}] needs a non-empty string {field!r}, got {shot!r}")
  if chat_template:
    if not getattr(tokenizer, "chat_template", None):
      raise ValueError(f"{where}: the tokenizer has no chat template; set chat_template=False to send plain prompts")
    turns = [
      turn
      for shot in shots
      for turn in ({"role": "user", "content": shot["prompt"]}, {"role": "assistant", "content": shot["answer"]})
    ]
    ids = tokenizer.apply_chat_template([*turns, {"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
  else:
    ids = tokenizer("".join(f"{shot['prompt']}\n{shot['answer']}\n\n" for shot in shots) + prompt)["input_ids"]
  prefix = record.get("response_prefix") or ""
  return ids + (tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else [])


def _meta_path(out_path: pathlib.Path) -> pathlib.Path:
  return out_path.with_name(out_path.name + ".meta.json")


def _saved_inputs(out_path: pathlib.Path) -> str | None:
  """The fingerprint of the inputs the file was made from (its .meta.json), or None."""
  meta = _meta_path(out_path)
  return json.loads(meta.read_text(encoding="utf-8")).get("inputs") if meta.exists() else None


def _take_over(out_path: pathlib.Path, inputs: str, made_elsewhere) -> None:
  """The file of `out_path`'s name in the first of the folders `made_elsewhere` that was made
  from `inputs`, linked in its place."""
  for other in (io.as_path(folder) / out_path.name for folder in made_elsewhere):
    if other.exists() and _saved_inputs(other) == inputs:
      io.link_files(other.parent, out_path.parent, (other.name, _meta_path(other).name))
      print(f"{out_path}: taken over from {other}, made from the same model, prompts and settings")
      return


def _trusted_lines(out_path: pathlib.Path, inputs: str, on_change: str) -> list[bytes]:
  """The lines of an earlier run with the same inputs, or none (after starting over, or an error)."""
  lines = io.complete_lines(out_path)
  saved = _saved_inputs(out_path)
  if not lines or saved == inputs:
    return lines
  if on_change == "error":
    raise StaleOutputError(
      f"{out_path}: holds generations made from other prompts, model or settings than this run's; "
      f"remove it (and {_meta_path(out_path).name}) or choose another output file"
    )
  print(f"{out_path}: made from other prompts, model or settings; starting it over")
  return []


def generate_to_jsonl(
  config: ModelConfig,
  params,
  tokenizer,
  records: Sequence[dict[str, Any]],
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
  model_identity: str = "",
  on_change: str = "restart",
  progress: bool = True,
  adapters=None,
  made_elsewhere: Sequence[str | pathlib.Path] = (),
) -> pathlib.Path:
  """Generates for every record (`{"prompt": ..., "id": ...}`) and appends one line per sample.

  Prompts start in order of token length, `batch_size` rows at a time, finished rows making
  room for the next (see `batched`). `model_identity` (a digest of the model's files) joins the
  fingerprint of the inputs; `on_change` says what happens to a file made from other inputs:
  "restart" or "error". `made_elsewhere`: other runs' folders; where this file is absent or
  stale, one of its name there made from the same inputs is taken over (hard links, never
  written through) and generated no further than it is missing.
  """
  if on_change not in ON_CHANGE:
    raise ValueError(f"on_change {on_change!r} is not one of {ON_CHANGE}")
  if num_samples < 1:
    raise ValueError(f"num_samples must be at least 1, got {num_samples}")
  out_path = io.as_path(out_path)
  records = list(records)
  if not records:
    raise ValueError("no prompts to generate from")
  settings = settings or SamplingSettings()
  prompts = [encode_prompt(tokenizer, r, chat_template, where=f"record {i}") for i, r in enumerate(records)]
  inputs = fingerprint.digest(
    model_identity,
    [
      [r["prompt"], r.get("id"), r.get("response_prefix", ""), *([r["shots"]] if r.get("shots") else [])]
      for r in records
    ],
    dataclasses.asdict(settings),
    max_new_tokens,
    num_samples,
    seed,
    batch_size,
    list(stop_strings),
    chat_template,
  )
  order = sorted(range(len(records)), key=lambda i: (len(prompts[i]), i))
  if _saved_inputs(out_path) != inputs:
    _take_over(out_path, inputs, made_elsewhere)
  lines = _trusted_lines(out_path, inputs, on_change)
  written = _written_rows(out_path, lines, len(records), num_samples)
  io.barrier(f"read {out_path}")  # every process has read the file before process 0 truncates it
  missing = [Row(i, s, prompts[i]) for i in order for s in range(num_samples) if (i, s) not in written]
  if not missing:
    return out_path  # complete, and made from these inputs: left as it is
  io.write_json(_meta_path(out_path), {"inputs": inputs, "records": len(records), "num_samples": num_samples})

  bar = tqdm.tqdm(
    total=len(records) * num_samples,
    initial=len(written),
    desc="generating",
    unit="answer",
    disable=not progress or not io.is_writer(),
  )
  samples_left = [num_samples] * len(records)
  for i, _ in written:
    samples_left[i] -= 1
  unwritten: list[Generation] = []  # finished rows waiting to be written: a batch's worth at a time
  with io.JsonlAppender(out_path, keep_lines=lines) as appender:

    def write():
      appender.append(
        {
          "index": g.prompt_index,
          "id": records[g.prompt_index].get("id", g.prompt_index),
          "sample": g.sample_index,
          "seed": g.seed,
          "prompt": records[g.prompt_index]["prompt"],
          "response_prefix": records[g.prompt_index].get("response_prefix", ""),
          "completion": g.text,
          "stop_reason": g.stop_reason,
          "tokens": g.tokens,
          "logprobs": [round(x, 6) for x in g.logprobs],
        }
        for g in unwritten
      )
      bar.update(len(unwritten))
      for g in unwritten:
        samples_left[g.prompt_index] -= 1
      unwritten.clear()

    def finished(generations: list[Generation]):
      unwritten.extend(generations)
      stop = preemption.requested()
      if len(unwritten) >= batch_size or stop:
        write()  # whole lines, flushed and synced
      if stop:
        bar.close()
        raise preemption.Preempted(
          f"preempted: {samples_left.count(0)} of {len(records)} prompts are answered in {out_path}; "
          "run the same command again to go on from there"
        )

    generate_rows(
      config,
      params,
      missing,
      max_new_tokens=max_new_tokens,
      settings=settings,
      seed=seed,
      batch_size=batch_size,
      stop_strings=stop_strings,
      tokenizer=tokenizer,
      mesh=mesh,
      on_batch=finished,
      adapters=adapters,
    )
    if unwritten:
      write()
  bar.close()
  io.barrier(f"wrote {out_path}")
  return out_path


def _written_rows(out_path: pathlib.Path, lines: list[bytes], num_records: int, num_samples: int) -> set:
  """The (record, sample) rows that an earlier run's lines hold, each checked to be one this run writes once."""
  written = set()
  for number, line in enumerate(lines, 1):
    try:
      row = json.loads(line)
      key = (int(row["index"]), int(row["sample"]))
    except (ValueError, KeyError, TypeError) as error:
      raise StaleOutputError(f"{out_path}: line {number} is not a generation line ({error}); remove the file") from None
    if not (0 <= key[0] < num_records and 0 <= key[1] < num_samples) or key in written:
      what = "a second line for" if key in written else "a row outside this run:"
      raise StaleOutputError(f"{out_path}: line {number} is {what} record {key[0]} sample {key[1]}; remove the file")
    written.add(key)
  return written


def read_generations(out_path: str | pathlib.Path, num_records: int, num_samples: int) -> list[list[dict]]:
  """The lines of a finished generation file as [record][sample]."""
  rows: list[list[dict | None]] = [[None] * num_samples for _ in range(num_records)]
  for _, row in io.read_records(out_path):
    rows[row["index"]][row["sample"]] = row
  missing = [i for i, samples in enumerate(rows) if any(s is None for s in samples)]
  if missing:
    raise StaleOutputError(f"{out_path}: has no line for record {missing[0]} ({len(missing)} records incomplete)")
  return rows


def generate_texts(
  model, records: Sequence[dict[str, Any]], out_path: str | pathlib.Path, **options
) -> list[list[Completion]]:
  """Completions [record][sample] of a loaded model for `records`, through a resumable file.

  `options` are those of `generate_to_jsonl`; the model's identity joins the fingerprint.
  """
  if model.tokenizer is None:
    where = model.source or "the model"
    raise ValueError(f"{where}: has no tokenizer (tokenizer.json or tokenizer.model) to encode prompts")
  options.setdefault("model_identity", model.identity)
  generate_to_jsonl(
    model.config, model.params, model.tokenizer, records, out_path, mesh=model.mesh, adapters=model.adapters, **options
  )
  generations = read_generations(out_path, len(records), options.get("num_samples", 1))
  return [
    [Completion(row.get("response_prefix", "") + row["completion"], row["stop_reason"]) for row in samples]
    for samples in generations
  ]
