"""The sampler: transformers parity, seeds, distributions, sharding, buckets, stops and resume."""

import json
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import scipy.stats
from conftest import TINY_HF_CONFIGS, subprocess_env

from srit_jax import sharding
from srit_jax.conversion import hf_checkpoint
from srit_jax.generation import batched as generation
from srit_jax.generation import jsonl
from srit_jax.generation import sampler as sampling
from srit_jax.generation.next_token import SamplingSettings
from srit_jax.model import decoder as model_lib


def _prompts(lengths, seed=0, vocab=128):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, vocab, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("family", sorted(TINY_HF_CONFIGS))
def test_batched_greedy_equals_transformers_generate(hf_model_dir, family):
  import torch

  directory, torch_model = hf_model_dir(family)
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  prompts = _prompts([9, 3, 14, 6])
  ours = generation.generate(config, params, prompts, max_new_tokens=12, eos_ids=())
  for prompt, g in zip(prompts, ours):
    with torch.no_grad():
      reference = torch_model.generate(
        torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
      )[0, len(prompt) :]
    assert g.tokens == reference.tolist()
    assert g.stop_reason == "length"


def test_logprobs_are_the_model_log_softmax_of_the_chosen_tokens(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  prompt = _prompts([7])[0]
  (g,) = generation.generate(config, params, [prompt], max_new_tokens=5, eos_ids=(), settings=SamplingSettings(1.0))
  logits = np.asarray(model_lib.forward(config, params, np.asarray([prompt + g.tokens])))[0]
  log_softmax = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  expected = [log_softmax[len(prompt) - 1 + i, t] for i, t in enumerate(g.tokens)]
  np.testing.assert_allclose(g.logprobs, expected, atol=1e-4)


@pytest.fixture
def tiny(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  return hf_checkpoint.load_hf_checkpoint(directory)


def test_same_seed_same_samples_and_batching_does_not_matter(tiny):
  config, params = tiny
  prompts = _prompts([5, 8, 3])
  settings = SamplingSettings(temperature=1.0, top_k=40, top_p=0.9)
  run = lambda seed, batch_size: [
    g.tokens
    for g in generation.generate(
      config,
      params,
      prompts,
      max_new_tokens=10,
      settings=settings,
      num_samples=3,
      seed=seed,
      batch_size=batch_size,
      eos_ids=(),
    )
  ]
  first = run(7, 16)
  assert first == run(7, 16)
  assert first == run(7, 4)  # other batch composition and padding, same rows
  assert first != run(8, 16)
  assert len({tuple(t) for t in first[:3]}) > 1, "samples of one prompt should differ"


@pytest.mark.parametrize(
  "batch_size,settings",
  [(4, SamplingSettings()), (16, SamplingSettings(temperature=1.0, top_p=0.9))],  # new rows 1 and 2 at a time
)
def test_refilled_batch_equals_a_batch_per_row_set(tiny, monkeypatch, batch_size, settings):
  """Rows that take the slots of finished ones generate what they would in a batch of their own."""
  config, params = tiny
  prompts = _prompts([5, 12, 3, 20, 7, 9, 2, 15, 11])
  eos = tuple(range(3, 23))  # about one token in six ends a row: rows end at different steps
  inserts = []
  real_insert = sampling.insert
  monkeypatch.setattr(sampling, "insert", lambda *a, **k: inserts.append(1) or real_insert(*a, **k))
  options = dict(max_new_tokens=12, settings=settings, num_samples=2, seed=3, eos_ids=eos)
  whole = generation.generate(config, params, prompts, batch_size=32, **options)
  assert not inserts
  assert len({len(g.tokens) for g in whole}) > 3, "rows should end at different steps"
  finished = []
  refilled = generation.generate(config, params, prompts, batch_size=batch_size, on_batch=finished.extend, **options)
  assert inserts, "the batch should have taken new rows"
  static = generation.generate(config, params, prompts, batch_size=batch_size, refill=False, **options)
  for other in (refilled, static):
    assert [(g.prompt_index, g.sample_index) for g in other] == [(g.prompt_index, g.sample_index) for g in whole]
    assert [g.tokens for g in other] == [g.tokens for g in whole]
    assert [g.stop_reason for g in other] == [g.stop_reason for g in whole]
    for a, b in zip(other, whole):
      np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  assert sorted(finished, key=lambda g: (g.prompt_index, g.sample_index)) == refilled
  assert finished != refilled, "rows should finish out of their order"


@pytest.mark.parametrize("family", ["llama", "mistral_sliding_window", "gemma3"])
def test_a_shared_prefix_prefilled_once_gives_what_each_row_prefilled_whole_gives(hf_model_dir, family):
  """Prompts sharing 20 leading tokens (shorter prompts than a window's reach among them):
  the same tokens, stop reasons and log-probs with the prefix prefilled once as without, in a
  batch of its own and a refilled batch; for Llama also with LoRA adapters (which do not depend
  on the family's attention)."""
  import dataclasses

  directory, _ = hf_model_dir(family)
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  prefix = _prompts([20], seed=5)[0]
  prompts = [prefix + own for own in _prompts([1, 12, 3, 30, 7], seed=6)]
  assert generation.shared_prefix_length(prompts) == 20
  assert generation.shared_prefix_length([[*prefix, 5], [*prefix[:10], 7]]) == 0  # under MIN_SHARED_PREFIX
  assert generation.shared_prefix_length([prefix] * 3) == 19  # one token of each left to prefill
  assert generation.shared_prefix_length([prefix]) == 0  # one row: nothing to share

  made = []
  real_prefix_cache = sampling.prefix_cache

  def counted(*args, **kwargs):
    made.append(args[2].shape)
    return real_prefix_cache(*args, **kwargs)

  cases = [
    (config, params, None, dict(batch_size=16)),
    (config, params, None, dict(batch_size=4, settings=SamplingSettings(temperature=1.0, top_p=0.9))),
  ]
  if family == "llama":
    lora_config = dataclasses.replace(config, lora_rank=4)
    adapters = jax.tree.map(
      lambda a: 0.3 * jax.random.normal(jax.random.key(1), a.shape, a.dtype),
      model_lib.init_adapters(lora_config, jax.random.key(0)),
    )
    cases.append((lora_config, params, adapters, dict(batch_size=4)))
  lengths = set()
  for model_config, model_params, model_adapters, options in cases:
    kwargs = dict(max_new_tokens=10, num_samples=2, seed=4, eos_ids=tuple(range(3, 23)), adapters=model_adapters)
    with pytest.MonkeyPatch.context() as patch:
      patch.setattr(sampling, "prefix_cache", counted)
      shared = generation.generate(model_config, model_params, prompts, **kwargs, **options)
    whole = generation.generate(model_config, model_params, prompts, share_prefix=False, **kwargs, **options)
    assert made.pop() == (1, 20)
    assert [g.tokens for g in shared] == [g.tokens for g in whole]
    assert [g.stop_reason for g in shared] == [g.stop_reason for g in whole]
    for a, b in zip(shared, whole):
      # Float32 over two summation orders: up to about 1e-5 apart on an AVX-512 host.
      np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=2e-5)
    lengths |= {len(g.tokens) for g in whole}
  assert len(lengths) > 2, "rows should end at different steps"


def test_prompts_after_a_prefix_prefilled_in_row_chunks_equal_one_pass(tiny):
  """On CPU the prompts after a shared prefix run 8 rows at a time (`_after_prefix`): the same
  last logits and cache as all rows at once, left padding included; and generation through it
  (16 distinct prompts) gives what whole prompts give."""
  config, params = tiny
  prefix = sampling.prefix_cache(config, params, np.asarray(_prompts([17], seed=2), np.int32))
  owns = _prompts([9, 2, 5, 9, 1, 7, 3, 9, 4, 8, 6, 2, 9, 5, 1, 3], seed=3)
  tokens = np.zeros((16, 9), np.int32)
  mask = np.zeros((16, 9), np.int32)
  for row, own in enumerate(owns):
    tokens[row, 9 - len(own) :], mask[row, 9 - len(own) :] = own, 1
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0) + 17
  run = jax.jit(sampling._after_prefix, static_argnums=(0, 6, 7, 8, 9))
  chunked = run(config, params, tokens, positions, mask, prefix, 40, None, None, 8)
  whole = run(config, params, tokens, positions, mask, prefix, 40, None, None, 16)
  assert jax.tree.structure(chunked) == jax.tree.structure(whole)
  for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(whole)):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=2e-5)
  assert int(chunked[1].end) == 26

  prompts = [_prompts([17], seed=2)[0] + own for own in owns]
  options = dict(max_new_tokens=8, eos_ids=tuple(range(3, 23)), batch_size=16)
  shared = generation.generate(config, params, prompts, **options)
  alone = generation.generate(config, params, prompts, share_prefix=False, **options)
  assert [g.tokens for g in shared] == [g.tokens for g in alone]
  for a, b in zip(shared, alone):
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_distinct_prompts_are_prefilled_once_for_the_rows_that_repeat_them():
  prompts, source, count = generation.distinct_prompts([[1, 2], [1, 2], [3], [3]], 4)
  assert (prompts, source.tolist(), count) == ([[1, 2], [3]], [0, 0, 1, 1], 2)
  prompts, source, count = generation.distinct_prompts([[1, 2], [1, 2], [3]], 8)
  assert (prompts, source.tolist(), count) == ([[1, 2], [3]], [0, 0, 1, 2, 2, 2, 2, 2], 4)  # idle rows: an empty one
  assert generation.distinct_prompts([[1], [2], [3]], 4) is None  # 3 prompts and an idle row: nothing saved
  assert generation.distinct_prompts([[1], [2], [3], [4]], 4) is None
  assert generation.distinct_prompts([[1], [2]], 8) is None  # no prompt repeats: idle rows alone are left
  assert generation.distinct_prompts([[1]] * 2, 8, multiple=4)[2] == 4  # rows split over 4 batch shards
  assert generation.distinct_prompts([[1]] * 8, 8)[2] == 1


@pytest.mark.parametrize("batch_size", [32, 8, 4])  # one batch; refilled 1 row at a time, with 2 and 4 of one prompt
def test_rows_repeating_a_prompt_prefill_it_once_and_give_what_each_row_prefilled_gives(tiny, batch_size):
  """A prompt's samples copy one prefill of it: the same tokens, stop reasons and log-probs as
  each row prefilled on its own, in a single batch, a refilled one and one batch after another."""
  config, params = tiny
  prompts = _prompts([5, 12, 3, 20, 7], seed=8)
  filled = []

  def counting(program, rows_argument):
    real = getattr(sampling, program)

    def counted(*args, **kwargs):
      filled.append((args[rows_argument].shape[0], args[rows_argument + 2].shape[0]))  # prompts, seeds
      return real(*args, **kwargs)

    return counted

  options = dict(
    max_new_tokens=12,
    num_samples=4,
    seed=5,
    eos_ids=tuple(range(3, 23)),
    settings=SamplingSettings(temperature=1.0, top_p=0.9),
    batch_size=batch_size,
  )
  for refill in (True, False):
    with pytest.MonkeyPatch.context() as patch:
      for program, rows_argument in (("sample", 2), ("start", 2), ("insert", 4)):
        patch.setattr(sampling, program, counting(program, rows_argument))
      shared = generation.generate(config, params, prompts, refill=refill, **options)
    once, filled[:] = list(filled), []
    whole = generation.generate(config, params, prompts, refill=refill, share_prefix=False, **options)
    assert [g.tokens for g in shared] == [g.tokens for g in whole]
    assert [g.stop_reason for g in shared] == [g.stop_reason for g in whole]
    for a, b in zip(shared, whole):
      np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert len({len(g.tokens) for g in whole}) > 2, "rows should end at different steps"
    assert sum(prefilled for prefilled, _ in once) < sum(rows for _, rows in once)

  config, params = tiny
  prompts = _prompts([5, 8])
  greedy = [g.tokens for g in generation.generate(config, params, prompts, max_new_tokens=10, eos_ids=())]
  for settings in (SamplingSettings(temperature=1e-6), SamplingSettings(temperature=1.0, top_k=1)):
    sampled = generation.generate(config, params, prompts, max_new_tokens=10, settings=settings, seed=3, eos_ids=())
    assert [g.tokens for g in sampled] == greedy


def _nucleus(probs, top_p):
  order = np.argsort(-probs, kind="stable")
  mass_before = np.cumsum(probs[order]) - probs[order]
  keep = np.zeros_like(probs, bool)
  keep[order[mass_before < top_p]] = True
  return keep


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8)])
def test_next_token_frequencies_match_the_softmax(tiny, temperature, top_p):
  config, params = tiny
  prompt = _prompts([6], seed=1)[0]
  logits = np.asarray(model_lib.forward(config, params, np.asarray([prompt])), np.float64)[0, -1] / temperature
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  keep = _nucleus(probs, top_p)
  probs = np.where(keep, probs, 0.0)
  probs /= probs.sum()
  draws = 6000
  settings = SamplingSettings(temperature=temperature, top_p=top_p)
  samples = generation.generate(
    config, params, [prompt], max_new_tokens=1, settings=settings, num_samples=draws, batch_size=draws, eos_ids=()
  )
  counts = np.bincount([g.tokens[0] for g in samples], minlength=config.vocab_size)
  assert counts[~keep].sum() == 0, "sampled a token outside the nucleus"
  expected = probs * draws
  big = expected >= 5  # pool the rare tokens into one bin so the chi-square approximation holds
  observed_bins = np.append(counts[big], counts[~big].sum())
  expected_bins = np.append(expected[big], expected[~big].sum())
  if expected_bins[-1] == 0:
    observed_bins, expected_bins = observed_bins[:-1], expected_bins[:-1]
  assert scipy.stats.chisquare(observed_bins, expected_bins).pvalue > 1e-3


@pytest.mark.slow
def test_sharded_generation_equals_single_device(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  _, sharded_params = hf_checkpoint.load_hf_checkpoint(directory, mesh=mesh)
  prompts = _prompts([5, 9, 2, 7])
  for settings in (SamplingSettings(), SamplingSettings(temperature=1.0, top_p=0.95)):
    kwargs = dict(max_new_tokens=8, settings=settings, num_samples=2, seed=1, eos_ids=())
    single = generation.generate(config, params, prompts, **kwargs)
    on_mesh = generation.generate(config, sharded_params, prompts, mesh=mesh, **kwargs)
    assert [g.tokens for g in on_mesh] == [g.tokens for g in single]
    np.testing.assert_allclose([g.logprobs for g in on_mesh], [g.logprobs for g in single], atol=1e-5)
  # A refilled batch on the mesh: 8 slots (4 batch shards), rows ending at different steps.
  kwargs = dict(max_new_tokens=10, num_samples=3, seed=2, eos_ids=tuple(range(3, 23)), batch_size=8)
  single = generation.generate(config, params, _prompts([5, 9, 2, 7, 11, 4]), **kwargs)
  on_mesh = generation.generate(config, sharded_params, _prompts([5, 9, 2, 7, 11, 4]), mesh=mesh, **kwargs)
  assert len({len(g.tokens) for g in single}) > 2
  assert [g.tokens for g in on_mesh] == [g.tokens for g in single]
  # Prompts sharing a prefix, prefilled once on the mesh, against whole prompts on one device.
  prompts = [_prompts([20], seed=5)[0] + own for own in _prompts([5, 9, 2, 7, 11, 4])]
  single = generation.generate(config, params, prompts, share_prefix=False, **kwargs)
  on_mesh = generation.generate(config, sharded_params, prompts, mesh=mesh, **kwargs)
  assert [g.tokens for g in on_mesh] == [g.tokens for g in single]
  for a, b in zip(on_mesh, single):
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_prompt_buckets_bound_the_number_of_compilations(tiny):
  config, params = tiny
  jax.clear_caches()
  prompts = _prompts(range(2, 40, 3))
  for i in range(0, len(prompts), 3):
    generation.generate(config, params, prompts[i : i + 3], max_new_tokens=4, batch_size=4)
  # Five batches, three prompt buckets: 16, 32 and 64 (clipped to 60 = context 64 - 4 new tokens).
  assert sampling.sample._cache_size() == 3


def test_rows_without_a_batch_size_decode_in_the_power_of_two_that_holds_them(tiny, monkeypatch):
  config, params = tiny
  batches = []
  real = sampling.sample
  record = lambda *a, **k: batches.append(a[4].shape[0]) or real(*a, **k)  # a[4]: the seeds, one a row
  monkeypatch.setattr(sampling, "sample", record)
  prompts = _prompts([5, 8, 3])
  for num_samples in (1, 3):
    generation.generate(config, params, prompts, max_new_tokens=4, num_samples=num_samples)
  generation.generate(config, params, prompts, max_new_tokens=4, batch_size=16)
  assert batches == [4, 16, 16]  # 3 rows in 4, 9 in 16; a batch size given is kept


def test_bad_input_is_refused(tiny):
  config, params = tiny
  with pytest.raises(ValueError, match="no prompts"):
    generation.generate(config, params, [], max_new_tokens=4)
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    generation.generate(config, params, [[5], []], max_new_tokens=4)
  with pytest.raises(ValueError, match="prompt 0 has 70 tokens"):
    generation.generate(config, params, [[5] * 70], max_new_tokens=4)
  with pytest.raises(ValueError, match="max_new_tokens must be positive"):
    generation.generate(config, params, [[5]], max_new_tokens=0)
  with pytest.raises(ValueError, match="top_p"):
    SamplingSettings(temperature=1.0, top_p=0.0)


# --- With a tokenizer: stop strings and JSONL runs ------------------------------------------------


def test_stop_strings_cut_the_text_and_end_the_row(tiny_with_tokenizer):
  from srit_jax.conversion import loading

  model = loading.load_model(tiny_with_tokenizer)
  prompt = model.tokenizer("Once upon a time")["input_ids"]
  (free,) = generation.generate(model.config, model.params, [prompt], max_new_tokens=24, tokenizer=model.tokenizer)
  assert free.stop_reason == "length" and len(free.tokens) == 24
  stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
  assert stop.strip(), free.text
  (stopped,) = generation.generate(
    model.config, model.params, [prompt], max_new_tokens=24, tokenizer=model.tokenizer, stop_strings=[stop]
  )
  assert stopped.stop_reason == "stop"
  assert stopped.text == free.text[: free.text.find(stop)]
  assert stopped.tokens == free.tokens[: len(stopped.tokens)] and len(stopped.tokens) < 24


def _records(n):
  return [{"id": f"q{i}", "prompt": f"Question {i}: what is {i} plus {2 * i}?" + " Think." * (i % 4)} for i in range(n)]


def test_resumed_jsonl_run_equals_uninterrupted_run(tiny_with_tokenizer, tmp_path, monkeypatch):
  from srit_jax.conversion import loading

  model = loading.load_model(tiny_with_tokenizer)
  kwargs = dict(
    max_new_tokens=6,
    settings=SamplingSettings(temperature=1.0),
    num_samples=2,
    batch_size=4,
    seed=5,
    progress=False,
  )
  reference = jsonl.generate_to_jsonl(
    model.config, model.params, model.tokenizer, _records(9), tmp_path / "full.jsonl", **kwargs
  )
  assert len(reference.read_text().splitlines()) == 18

  # Crash once some lines are written, leaving half a line behind as a kill during a write would.
  real_generate_rows = jsonl.generate_rows
  resumed_path = tmp_path / "resumed.jsonl"

  def crashing_generate_rows(*args, on_batch, **kw):
    def write_then_crash(generations):
      on_batch(generations)
      if resumed_path.read_text().count("\n") >= 4:
        raise KeyboardInterrupt

    return real_generate_rows(*args, on_batch=write_then_crash, **kw)

  monkeypatch.setattr(jsonl, "generate_rows", crashing_generate_rows)
  with pytest.raises(KeyboardInterrupt):
    jsonl.generate_to_jsonl(model.config, model.params, model.tokenizer, _records(9), resumed_path, **kwargs)
  monkeypatch.setattr(jsonl, "generate_rows", real_generate_rows)
  kept = len(resumed_path.read_text().splitlines())
  assert 4 <= kept < 18
  with open(resumed_path, "a") as f:
    f.write('{"index": 3, "sample": 0, "comp')
  jsonl.generate_to_jsonl(model.config, model.params, model.tokenizer, _records(9), resumed_path, **kwargs)
  assert_same_generations(resumed_path, reference)

  # A file with a line this run would not write is refused, naming the line.
  lines = reference.read_text().splitlines()
  resumed_path.write_text("\n".join(lines[:5] + lines[4:5]) + "\n")
  with pytest.raises(jsonl.StaleOutputError, match="line 6 is a second line for record"):
    jsonl.generate_to_jsonl(model.config, model.params, model.tokenizer, _records(9), resumed_path, **kwargs)


def test_samples_another_run_made_from_the_same_inputs_are_taken_over_not_generated(
  tiny_with_tokenizer, tmp_path, monkeypatch
):
  from srit_jax.conversion import loading

  model = loading.load_model(tiny_with_tokenizer)
  kwargs = dict(max_new_tokens=4, settings=SamplingSettings(temperature=1.0), num_samples=2, seed=5, progress=False)
  other = tmp_path / "other" / "samples.cot.jsonl"
  jsonl.generate_to_jsonl(model.config, model.params, model.tokenizer, _records(3), other, **kwargs)
  generated = []
  real_generate_rows = jsonl.generate_rows
  monkeypatch.setattr(jsonl, "generate_rows", lambda *a, **k: generated.append(1) or real_generate_rows(*a, **k))
  here = tmp_path / "here" / "samples.cot.jsonl"
  here.parent.mkdir()
  here.write_text('{"stale": true}\n')  # made from other inputs before: replaced
  jsonl.generate_to_jsonl(
    model.config, model.params, model.tokenizer, _records(3), here, made_elsewhere=[other.parent], **kwargs
  )
  assert generated == [] and here.samefile(other)
  assert here.with_name(here.name + ".meta.json").samefile(other.with_name(other.name + ".meta.json"))
  # Another seed: other inputs, generated here.
  third = tmp_path / "third" / "samples.cot.jsonl"
  jsonl.generate_to_jsonl(
    model.config,
    model.params,
    model.tokenizer,
    _records(3),
    third,
    made_elsewhere=[other.parent],
    **{**kwargs, "seed": 6},
  )
  assert generated and not third.samefile(other)


def assert_same_generations(path, reference_path):
  """Both files hold the same generation lines (in any order), log-probs within rounding."""
  read = lambda p: sorted(
    (json.loads(line) for line in p.read_text().splitlines()), key=lambda r: (r["index"], r["sample"])
  )
  rows, reference = read(path), read(reference_path)
  assert [{k: v for k, v in r.items() if k != "logprobs"} for r in rows] == [
    {k: v for k, v in r.items() if k != "logprobs"} for r in reference
  ]
  for row, expected in zip(rows, reference):
    np.testing.assert_allclose(row["logprobs"], expected["logprobs"], atol=2e-6)


@pytest.mark.slow
def test_generate_command_killed_and_restarted_writes_the_same_file(tiny_with_tokenizer, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps(r) + "\n" for r in _records(12)))
  command = [
    sys.executable,
    "-m",
    "srit_jax.cli",
    "generate",
    "--config=configs/generate.py",
    f"--config.model={tiny_with_tokenizer}",
    f"--config.prompts_file={prompts}",
    "--config.max_new_tokens=8",
    "--config.batch_size=2",
    "--config.temperature=1.0",
    "--config.mesh.fsdp=1",
  ]
  env = subprocess_env(1)
  full = tmp_path / "full.jsonl"
  subprocess.run([*command, f"--out={full}"], check=True, env=env, capture_output=True, timeout=300)
  killed = tmp_path / "killed.jsonl"
  process = subprocess.Popen(
    [*command, f"--out={killed}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None:
    if killed.exists() and killed.stat().st_size > 0:
      break
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  lines_at_kill = len(killed.read_bytes().split(b"\n")) - 1 if killed.exists() else 0
  assert lines_at_kill < 12, "the run finished before it could be killed"
  subprocess.run([*command, f"--out={killed}"], check=True, env=env, capture_output=True, timeout=300)
  assert_same_generations(killed, full)


def test_prompt_file_errors_name_file_and_line(tmp_path):
  from srit_jax.phases import generate as generate_command

  path = tmp_path / "p.jsonl"
  path.write_text('{"prompt": "ok"}\n{"prompt": \n')
  with pytest.raises(ValueError, match=r"p\.jsonl:2: not valid JSON"):
    generate_command.read_prompts(path)
  path.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
  with pytest.raises(ValueError, match=r"p\.jsonl:2: field 'prompt'"):
    generate_command.read_prompts(path)
