"""Stop strings in generation: the token sequences that end a row early on the device (each
string, and the string after a space, as the tokenizer encodes them; `stop_token_table` lays them
out for the sampler), and the exact cut of the text on the host (`cut_at_stop_strings`), since a
string can end inside a token or be encoded otherwise than on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stop_token_table(stop_token_sequences: Sequence[Sequence[int]]) -> np.ndarray:
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
