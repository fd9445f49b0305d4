"""Instruction-tuning examples as token ids with answer-only loss masks, and packed batches.

An example (instruction, input, output) is rendered through the student's chat template:
the prompt with the generation marker, then the whole conversation; the answer is what the
conversation adds after the prompt, and only its tokens carry loss. Base models without a
template use a plain "### Instruction / ### Response" format.

Rows are packed greedily: several examples per row, each its own segment (ids 1, 2, ...)
with positions restarting at 0, so nothing attends across examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


class EmptyLossMaskError(ValueError):
  """No answer token carries loss: the template dropped the answer or its generation marker."""


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
  tokens: list[int]  # prompt then answer
  loss_mask: list[int]  # 1 on answer tokens


@dataclasses.dataclass
class TokenizeStats:
  kept: int = 0
  prompt_truncated: int = 0
  dropped_too_long: int = 0


def user_message(instruction: str, input_text: str = "") -> str:
  return instruction if not input_text else f"{instruction}\n\n{input_text}"


def tokenize_example(tokenizer, instruction: str, input_text: str, output: str, *, use_chat_template: bool = True):
  """Prompt and answer ids of one example; raises EmptyLossMaskError when the answer is empty."""
  user = user_message(instruction, input_text)
  if use_chat_template and getattr(tokenizer, "chat_template", None):
    prompt_ids = _ids(tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True))
    full_ids = _ids(
      tokenizer.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": output}], add_generation_prompt=False
      )
    )
    if full_ids[: len(prompt_ids)] != prompt_ids:
      raise EmptyLossMaskError(
        "the chat template renders the prompt differently alone and inside the conversation, "
        "so the answer tokens cannot be told apart"
      )
    answer_ids = full_ids[len(prompt_ids) :]
  else:
    prompt_ids = tokenizer(PLAIN_TEMPLATE.format(prompt=user))["input_ids"]
    answer_ids = tokenizer(output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
  special_ids = set(tokenizer.all_special_ids)
  if not output.strip() or all(t in special_ids for t in answer_ids):
    raise EmptyLossMaskError(
      f"no answer token carries loss (answer {output[:40]!r} rendered as {len(answer_ids)} tokens): "
      "the chat template drops the assistant message or lacks a generation marker"
    )
  return prompt_ids, answer_ids


def _ids(rendered) -> list[int]:
  return list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)


def fit_to_length(prompt_ids, answer_ids, max_length: int, min_prompt_tokens: int = 8, stats=None):
  """Cuts the prompt from the left (keeping its end and generation marker) to fit `max_length`.

  Returns None when the answer cannot fit beside `min_prompt_tokens` of prompt.
  """
  stats = stats if stats is not None else TokenizeStats()
  if len(answer_ids) + min(len(prompt_ids), min_prompt_tokens) > max_length:
    stats.dropped_too_long += 1
    return None
  room = max_length - len(answer_ids)
  if len(prompt_ids) > room:
    prompt_ids = prompt_ids[len(prompt_ids) - room :]
    stats.prompt_truncated += 1
  stats.kept += 1
  return TokenizedExample(list(prompt_ids) + list(answer_ids), [0] * len(prompt_ids) + [1] * len(answer_ids))


@dataclasses.dataclass(frozen=True)
class Batch:
  """Model inputs and next-token targets, [B, L] each (numpy on the host)."""

  tokens: np.ndarray
  targets: np.ndarray
  positions: np.ndarray
  segment_ids: np.ndarray  # 0 = padding
  loss_weights: np.ndarray  # per-token loss weight; 0 on prompts and padding

  def as_dict(self) -> dict[str, np.ndarray]:
    return dataclasses.asdict(self)


def pack_rows(examples: Sequence[TokenizedExample], row_length: int, *, pack: bool = True) -> list[list[int]]:
  """Example indices per row, first-fit in order; one example per row when `pack` is False.

  An example of n tokens needs n - 1 positions (inputs are all tokens but the last).
  """
  rows: list[list[int]] = []
  room: list[int] = []
  for index, example in enumerate(examples):
    need = len(example.tokens) - 1
    if need > row_length:
      raise ValueError(f"example {index} needs {need} positions, more than the row length {row_length}")
    target = next((r for r in range(len(rows)) if room[r] >= need), None) if pack else None
    if target is None:
      rows.append([])
      room.append(row_length)
      target = len(rows) - 1
    rows[target].append(index)
    room[target] -= need
  return rows


def make_batch(
  examples: Sequence[TokenizedExample], rows: Iterable[Sequence[int]], row_length: int, normalization: str = "token"
) -> Batch:
  """Arrays for the given rows. `normalization` "token": every answer token weighs 1;
  "sequence": each example's answer tokens share weight 1 (so long answers do not dominate)."""
  rows = list(rows)
  shape = (len(rows), row_length)
  tokens, targets, positions, segments = (np.zeros(shape, np.int32) for _ in range(4))
  weights = np.zeros(shape, np.float32)
  for r, row in enumerate(rows):
    offset = 0
    for segment, index in enumerate(row, start=1):
      example = examples[index]
      n = len(example.tokens) - 1
      span = slice(offset, offset + n)
      tokens[r, span] = example.tokens[:-1]
      targets[r, span] = example.tokens[1:]
      positions[r, span] = np.arange(n)
      segments[r, span] = segment
      mask = np.asarray(example.loss_mask[1:], np.float32)
      if normalization == "sequence":
        mask = mask / max(mask.sum(), 1.0)
      elif normalization != "token":
        raise ValueError(f"normalization {normalization!r} is not 'token' or 'sequence'")
      weights[r, span] = mask
      offset += n
  return Batch(tokens, targets, positions, segments, weights)
