"""The jitted decode loop: prefill, then a `lax.while_loop` of steps, each choosing its rows' next
tokens by next_token.py.

Each row draws from its own key, `fold_in(key(seed), step)` with `step` the row's own count
of new tokens, so a row's samples depend on its seed alone, not on the batch it shares or
when it joined it. Log-probabilities are those of the model's own distribution
(temperature 1, nothing filtered) at the chosen tokens.

Rows that share a prompt (its samples) may prefill it once: with `source_B`, the prompts are
the distinct ones and row b copies prompt `source_B[b]`'s cache and next-token logits.

`sample` runs one batch to its end. A batch whose finished rows take new prompts (continuous
batching) runs as `start`, then `advance` until enough rows are done, `insert` of new prompts
into the finished rows, and `advance` again; each row keeps its own cache end, step and seed
in a `DecodeState`.

Shapes: B batch, U distinct prompts (B without `source_B`), P prompt length, N new tokens,
V vocab, M stop sequences of length Q.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from srit_jax.generation import next_token
from srit_jax.model import decoding, kv_cache
from srit_jax.model.config import ModelConfig

STOP_LENGTH, STOP_EOS, STOP_SEQUENCE = 0, 1, 2  # why a row stopped
_NO_TOKEN = -1
_CPU_PREFILL_ROWS = 8  # rows per prefill chunk on CPU (measured: 64 x 160 tokens 14.2 s vs. 16.3 s at once)


def _ends_with_stop(window_BxQ: jax.Array, stops_MxQ: jax.Array) -> jax.Array:
  """Whether each row's last Q tokens end with any stop sequence (right-aligned, -1 = wildcard)."""
  match_BxMxQ = (window_BxQ[:, None, :] == stops_MxQ[None]) | (stops_MxQ[None] == _NO_TOKEN)
  real = jnp.any(stops_MxQ != _NO_TOKEN, axis=-1)
  return jnp.any(jnp.all(match_BxMxQ, axis=-1) & real[None], axis=-1)


@flax.struct.dataclass
class DecodeState:
  """A batch of rows mid-generation. An idle or finished row is `done`."""

  cache: kv_cache.KVCache
  logits_BxV: jax.Array  # float32: the next token's logits
  position_B: jax.Array  # the next token's position
  step_B: jax.Array  # new tokens generated so far
  seed_B: jax.Array
  done_B: jax.Array
  reason_B: jax.Array  # why a done row stopped (STOP_*)
  out_BxN: jax.Array  # [B, Q + N]: Q columns of -1, then the new tokens (-1 after the stop)
  logprobs_BxN: jax.Array  # [B, N]


@functools.partial(jax.jit, static_argnames=("config",))
def prefix_cache(config: ModelConfig, params, tokens_1xL: jax.Array, *, adapters=None) -> kv_cache.KVCache:
  """The cache of a prompt prefix that every row of a call shares, computed once (one row).

  `sample`, `start` and `insert` take it as `prefix` with prompts that leave it out: each row's
  cache then starts with the prefix's slots, and only the rows' own tokens are prefilled. Under
  a mesh the row is left to the compiler's layout (it is broadcast to every row's shard)."""
  length = tokens_1xL.shape[1]
  positions = jnp.arange(length, dtype=jnp.int32)[None]
  cache = kv_cache.init_cache(config, 1, length)
  _, cache = decoding.prefill(config, params, tokens_1xL, positions, jnp.ones_like(positions), cache, adapters=adapters)
  return cache


def _prefilled(
  config,
  params,
  tokens_UxP,
  mask_UxP,
  seeds_B,
  cache_length,
  stop_len,
  max_new_tokens,
  mesh,
  adapters,
  prefix=None,
  source_B=None,
):
  """The state of left-padded prompts run into a fresh cache of `cache_length` slots, after the
  shared `prefix` (a `prefix_cache`) where there is one; with `source_B`, row b starts from
  prompt `source_B[b]` (each prompt prefilled once however many rows take it)."""
  prompts, _ = tokens_UxP.shape
  batch = seeds_B.shape[0]
  positions_UxP = jnp.maximum(jnp.cumsum(mask_UxP, axis=1) - 1, 0)
  # On CPU, a large batch's prefill runs faster a few rows at a time (see `decoding.prefill`).
  one_device = mesh is None or mesh.size == 1
  cpu = one_device and jax.default_backend() == "cpu" and prompts % _CPU_PREFILL_ROWS == 0
  rows_per_chunk = _CPU_PREFILL_ROWS if cpu else None
  if prefix is not None:
    positions_UxP = positions_UxP + prefix.positions.shape[1]
    last_logits_UxV, cache = _after_prefix(
      config,
      params,
      tokens_UxP,
      positions_UxP,
      mask_UxP,
      prefix,
      cache_length,
      mesh,
      adapters,
      rows_per_chunk,
    )
  else:
    cache = kv_cache.init_cache(config, prompts, cache_length, mesh=mesh)
    last_logits_UxV, cache = decoding.prefill(
      config,
      params,
      tokens_UxP,
      positions_UxP,
      mask_UxP,
      cache,
      mesh,
      rows_per_chunk,
      adapters=adapters,
    )
  if source_B is None:
    last_logits_BxV, positions_BxP, mask_BxP = last_logits_UxV, positions_UxP, mask_UxP
  else:
    cache = kv_cache.take_rows(cache, source_B, mesh)
    last_logits_BxV, positions_BxP, mask_BxP = (x[source_B] for x in (last_logits_UxV, positions_UxP, mask_UxP))
  return DecodeState(
    cache=cache,
    logits_BxV=last_logits_BxV.astype(jnp.float32),
    position_B=positions_BxP[:, -1] + 1,
    step_B=jnp.zeros((batch,), jnp.int32),
    seed_B=seeds_B,
    done_B=~jnp.any(mask_BxP > 0, axis=1),
    reason_B=jnp.full((batch,), STOP_LENGTH, jnp.int32),
    out_BxN=jnp.full((batch, stop_len + max_new_tokens), _NO_TOKEN, jnp.int32),
    logprobs_BxN=jnp.zeros((batch, max_new_tokens), jnp.float32),
  )


def _after_prefix(
  config, params, tokens_UxP, positions_UxP, mask_UxP, prefix, cache_length, mesh, adapters, rows_per_chunk=None
):
  """(last logits [U, V], cache) of prompts run as one chunk against a fresh cache of
  `cache_length` slots that starts with `prefix`; with `rows_per_chunk`, that many prompts at
  a time (`decoding.map_row_chunks`, as `decoding.prefill` runs its rows on CPU)."""
  prompts = tokens_UxP.shape[0]
  rows = rows_per_chunk or prompts
  inputs = (tokens_UxP, positions_UxP, mask_UxP)
  layer_params = decoding.unstack_layers(params)
  layer_adapters = decoding.unstack_layers(adapters) if adapters is not None else None

  def run(chunk):
    tokens_RxP, positions_RxP, mask_RxP = chunk
    cache = kv_cache.with_prefix(kv_cache.init_cache(config, rows, cache_length, mesh=mesh), prefix, mesh)
    logits_Rx1xV, cache = decoding.decode(
      config, params, layer_params, tokens_RxP, positions_RxP, mask_RxP, cache, mesh, layer_adapters, last_only=True
    )
    return logits_Rx1xV[:, -1], cache

  if rows == prompts:
    return run(inputs)
  logits_CxRxV, cache_C = decoding.map_row_chunks(run, inputs, rows)
  merge = decoding.merge_row_chunks
  cache = kv_cache.KVCache(
    keys=tuple(map(merge, cache_C.keys)),
    values=tuple(map(merge, cache_C.values)),
    positions=merge(cache_C.positions),
    segment_ids=merge(cache_C.segment_ids),
    end=cache_C.end[0],  # every chunk's rows end at the same slot
  )
  return merge(logits_CxRxV), cache


def prefix_length(prefix: kv_cache.KVCache | None) -> int:
  """The tokens a `prefix_cache` holds (0 for none)."""
  return 0 if prefix is None else prefix.positions.shape[1]


def _run(config, params, state, eos_ids, stops_MxQ, stop_when_done, *, settings, max_new_tokens, mesh, adapters):
  """Decode steps for every row until `stop_when_done` rows are done (or all are)."""
  batch = state.done_B.shape[0]
  stop_len = stops_MxQ.shape[1]
  layer_params = decoding.unstack_layers(params)
  layer_adapters = decoding.unstack_layers(adapters) if adapters is not None else None
  columns = jnp.arange(stop_len + max_new_tokens, dtype=jnp.int32)[None]

  def cond(s):
    return ~jnp.all(s.done_B) & (jnp.sum(s.done_B) < stop_when_done)

  def body(s):
    keys_B = jax.vmap(lambda seed, step: jax.random.fold_in(jax.random.key(seed), step))(s.seed_B, s.step_B)
    token_B = next_token.choose_tokens(s.logits_BxV, keys_B, settings)
    chosen_logit_B = jnp.take_along_axis(s.logits_BxV, token_B[:, None], axis=-1)[:, 0]
    logprob_B = chosen_logit_B - jax.nn.logsumexp(s.logits_BxV, axis=-1)
    live_B = ~s.done_B
    here_BxN = (columns == (stop_len + s.step_B)[:, None]) & live_B[:, None]
    out_BxN = jnp.where(here_BxN, token_B[:, None], s.out_BxN)
    logprobs_BxN = jnp.where(here_BxN[:, stop_len:], logprob_B[:, None], s.logprobs_BxN)
    window_BxQ = jnp.take_along_axis(out_BxN, s.step_B[:, None] + 1 + columns[:, :stop_len], axis=1)
    hit_eos = jnp.isin(token_B, eos_ids) & live_B
    hit_stop = _ends_with_stop(window_BxQ, stops_MxQ) & live_B & ~hit_eos
    reason_B = jnp.where(hit_eos, STOP_EOS, jnp.where(hit_stop, STOP_SEQUENCE, s.reason_B))
    step_B = s.step_B + live_B.astype(jnp.int32)
    logits, cache = decoding.decode(
      config,
      params,
      layer_params,
      token_B[:, None],
      s.position_B[:, None],
      jnp.ones((batch, 1), jnp.int32),
      s.cache,
      mesh,
      layer_adapters,
    )
    return DecodeState(
      cache=cache,
      logits_BxV=logits[:, -1].astype(jnp.float32),
      position_B=s.position_B + 1,
      step_B=step_B,
      seed_B=s.seed_B,
      done_B=s.done_B | hit_eos | hit_stop | (step_B >= max_new_tokens),
      reason_B=reason_B,
      out_BxN=out_BxN,
      logprobs_BxN=logprobs_BxN,
    )

  return jax.lax.while_loop(cond, body, state)


@functools.partial(jax.jit, static_argnames=("config", "settings", "max_new_tokens", "mesh"))
def sample(
  config: ModelConfig,
  params,
  tokens_UxP: jax.Array,
  mask_UxP: jax.Array,
  seeds_B: jax.Array,
  eos_ids: jax.Array,
  stops_MxQ: jax.Array,
  *,
  settings: next_token.SamplingSettings,
  max_new_tokens: int,
  mesh: Mesh | None = None,
  adapters=None,
  prefix: kv_cache.KVCache | None = None,
  source_B: jax.Array | None = None,
):
  """Generates up to `max_new_tokens` per left-padded row; rows with an all-zero mask are idle.
  With `prefix` (a `prefix_cache`), each row's prompt is the prefix followed by its tokens here;
  with `source_B`, row b's prompt is `tokens_UxP[source_B[b]]`.

  Returns (tokens [B, N] with -1 after the stop, log-probs [B, N], stop reason [B]).
  """
  prompt_len = tokens_UxP.shape[1]
  batch = seeds_B.shape[0]
  stop_len = stops_MxQ.shape[1]
  run = dict(settings=settings, max_new_tokens=max_new_tokens, mesh=mesh, adapters=adapters)
  slots = prefix_length(prefix) + prompt_len + max_new_tokens
  state = _prefilled(
    config, params, tokens_UxP, mask_UxP, seeds_B, slots, stop_len, max_new_tokens, mesh, adapters, prefix, source_B
  )
  final = _run(config, params, state, eos_ids, stops_MxQ, batch, **run)
  return final.out_BxN[:, stop_len:], final.logprobs_BxN, final.reason_B


@functools.partial(jax.jit, static_argnames=("config", "cache_length", "stop_len", "max_new_tokens", "mesh"))
def start(
  config: ModelConfig,
  params,
  tokens_UxP: jax.Array,
  mask_UxP: jax.Array,
  seeds_B: jax.Array,
  *,
  cache_length: int,
  stop_len: int,
  max_new_tokens: int,
  mesh: Mesh | None = None,
  adapters=None,
  prefix: kv_cache.KVCache | None = None,
  source_B: jax.Array | None = None,
) -> DecodeState:
  """A batch that will take new prompts: its first prompts in a cache of `cache_length` slots
  (the shared `prefix`'s slots among them; `source_B` as for `sample`).

  `stop_len`: the width Q of the stop-sequence table `advance` gets. Rows with an all-zero mask
  start done (free for `insert`).
  """
  state = _prefilled(
    config,
    params,
    tokens_UxP,
    mask_UxP,
    seeds_B,
    cache_length,
    stop_len,
    max_new_tokens,
    mesh,
    adapters,
    prefix,
    source_B,
  )
  batch = seeds_B.shape[0]
  return state.replace(cache=state.cache.replace(end=jnp.broadcast_to(state.cache.end, (batch,))))


@functools.partial(jax.jit, static_argnames=("config", "settings", "max_new_tokens", "mesh"), donate_argnames="state")
def advance(
  config: ModelConfig,
  params,
  state: DecodeState,
  eos_ids: jax.Array,
  stops_MxQ: jax.Array,
  stop_when_done: jax.Array,
  *,
  settings: next_token.SamplingSettings,
  max_new_tokens: int,
  mesh: Mesh | None = None,
  adapters=None,
) -> DecodeState:
  """Decodes until `stop_when_done` rows (idle ones included) are done, or every row is."""
  run = dict(settings=settings, max_new_tokens=max_new_tokens, mesh=mesh, adapters=adapters)
  return _run(config, params, state, eos_ids, stops_MxQ, stop_when_done, **run)


@functools.partial(jax.jit, static_argnames=("config", "mesh"), donate_argnames="state")
def insert(
  config: ModelConfig,
  params,
  state: DecodeState,
  rows_G: jax.Array,
  tokens_UxP: jax.Array,
  mask_UxP: jax.Array,
  seeds_G: jax.Array,
  *,
  mesh: Mesh | None = None,
  adapters=None,
  prefix: kv_cache.KVCache | None = None,
  source_G: jax.Array | None = None,
) -> DecodeState:
  """`state` with G new left-padded prompts prefilled into rows `rows_G` (a row index of B or
  more: no row, for a group padded to its size; `source_G` as `source_B` for `sample`). Each
  new row's cache holds the shared `prefix` and its prompt at slots [0, P) (P counting both);
  its other slots are emptied."""
  cache_length = state.cache.positions.shape[1]
  prompt_len = prefix_length(prefix) + tokens_UxP.shape[1]
  new = _prefilled(
    config,
    params,
    tokens_UxP,
    mask_UxP,
    seeds_G,
    prompt_len,
    state.out_BxN.shape[1] - state.logprobs_BxN.shape[1],
    state.logprobs_BxN.shape[1],
    mesh,
    adapters,
    prefix,
    source_G,
  )
  put = lambda old, rows: old.at[rows_G].set(rows, mode="drop")
  slots = lambda x: jnp.pad(x, ((0, 0), (0, cache_length - prompt_len)))  # the emptied slots: segment 0
  cache = kv_cache.KVCache(
    keys=tuple(
      old.at[rows_G, :, :, :prompt_len].set(k, mode="drop") for old, k in zip(state.cache.keys, new.cache.keys)
    ),
    values=tuple(
      old.at[rows_G, :, :prompt_len, :].set(v, mode="drop") for old, v in zip(state.cache.values, new.cache.values)
    ),
    positions=put(state.cache.positions, slots(new.cache.positions)),
    segment_ids=put(state.cache.segment_ids, slots(new.cache.segment_ids)),
    end=put(state.cache.end, jnp.full(rows_G.shape, prompt_len, jnp.int32)),
  )
  fields = ("logits_BxV", "position_B", "step_B", "seed_B", "done_B", "reason_B", "out_BxN", "logprobs_BxN")
  return state.replace(cache=cache, **{f: put(getattr(state, f), getattr(new, f)) for f in fields})
