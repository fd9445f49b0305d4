"""DPO step throughput (pairs per second), MFU, compile time and memory, beside a PyTorch step;
and on real pairs, each way of laying them out in rows.

    python benchmarks/dpo_step.py                                            # SmolLM2-135M, CPU
    python benchmarks/dpo_step.py --preset=tinyllama-1.1b --dtype=bfloat16 --sizes=8x1024 \\
        --baseline=torch_eager                                                # on a GPU
    python benchmarks/dpo_step.py --model=smollm2-135m-instruct \\
        --pairs_file=runs/study/base/refine/pairs.jsonl --max_length=224    # packings on real pairs

Ours: `dpo_step` (sigmoid loss, beta 0.1, AdamW with clipping, state donated), jitted once over
every local device, in two forms: the frozen reference run inside the step, and reference
log-probabilities precomputed (the step then runs the policy only). Baseline `torch_eager`: the
same loss in `transformers` — reference forward under `no_grad`, policy forward over chosen and
rejected rows, summed answer log-probs, `-logsigmoid(beta * margin)`, backward, clip, AdamW —
with bfloat16 autocast when ours computes in bfloat16. With --sizes a pair is two rows of
`length` positions (the first half of each row is its prompt, shared by both sides, the second
its answer). MFU as in train_step.py, on the step's rows.

With --pairs_file (pairs.jsonl of a refine run) the pairs are tokenized with the model's chat
template as refine does, and each --packings layout (one row per side, packed sides, shared
prompts; rows as long as --pack_lengths times max_length) trains on the same batches of
--batch_size pairs — successive batches of a seeded epoch, one per timed call — with the
reference precomputed, as refine's default. Reported per layout: pairs per second, rows and
positions per step, and the padding share (positions that hold no token). With
--loss_type=nll (the compute-matched control's cross-entropy on the chosen answers) each
layout runs twice: on whole pairs with the reference precomputed (rejected answers laid out
and run, unread) and on the chosen answers alone with no reference, as refine runs it. With
--lora_ranks=0,16 each layout trains every parameter (0) and LoRA adapters of each rank (alpha
2R, every projection) over the frozen base, as the study's `lora` variant does. With
--epoch_steps=N each layout also trains N successive batches of the epoch twice, timed from
first to last (every row count compiled before): each batch with only the rows its pairs need
(as refine runs: `PairBatchIterator.trim_rows`) and each with the most any of them needs. With
--output_at=every,answers each layout runs with the output layer (the vocabulary projection and
its softmax) at every position of its rows and at their answer positions alone (as refine runs:
`PairBatchIterator.answer_positions`, the most any timed batch needs, rounded up).
"""

from __future__ import annotations

import itertools
import time

import common
from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["4x256"], "pairs x positions per side")
_MICROBATCHES = flags.DEFINE_integer("microbatches", 1, "gradient accumulation of ours")
_PAIRS_FILE = flags.DEFINE_string("pairs_file", None, "real pairs (a refine run's pairs.jsonl): time each packing")
_PACKINGS = flags.DEFINE_list("packings", ["none", "sides", "shared_prompt"], "layouts to time on --pairs_file")
_PACK_LENGTHS = flags.DEFINE_list("pack_lengths", ["1", "2", "4"], "packed row lengths, as multiples of max_length")
_MAX_LENGTH = flags.DEFINE_integer("max_length", 224, "positions per side (refine's max_length)")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "pairs per step on --pairs_file or --uneven_pairs")
_LOSS_TYPE = flags.DEFINE_enum(
  "loss_type", "sigmoid", ["sigmoid", "ipo", "hinge", "nll"], "the loss timed on --pairs_file or --uneven_pairs"
)
_LORA_RANKS = flags.DEFINE_list("lora_ranks", ["0"], "on --pairs_file: full fine-tuning (0) and/or LoRA of these ranks")
_EPOCH_STEPS = flags.DEFINE_integer(
  "epoch_steps", 0, "on --pairs_file: time this many successive steps with each batch's own rows and with the most"
)
_OUTPUT_AT = flags.DEFINE_list(
  "output_at", ["every"], "on --pairs_file: the output layer at every position and/or at the answers alone"
)
_UNEVEN_PAIRS = flags.DEFINE_integer(
  "uneven_pairs", 0, "time each packing on this many random pairs shaped like the study's (no tokenizer needed)"
)


def _random_pairs(pairs, length, vocab):
  """`pairs` pairs of two `length`-position sides: a shared prompt half, then each side's answer."""
  import numpy as np

  from srit_jax.data import pair_batches
  from srit_jax.data.sft_examples import TokenizedExample

  rng = np.random.default_rng(0)
  half = length // 2
  side = lambda prompt: TokenizedExample(
    prompt + list(rng.integers(0, vocab, length + 1 - half)), [0] * half + [1] * (length + 1 - half)
  )
  out = []
  for _ in range(pairs):
    prompt = list(rng.integers(0, vocab, half))
    out.append(pair_batches.TokenizedPair(side(prompt), side(prompt)))
  return out


def _uneven_pairs(count, max_length, vocab):
  """Random pairs shaped like cot_vs_direct's, scaled to `max_length`: a prompt of 6-25% of it,
  a chosen chain of thought of 12-60%, a rejected direct answer of 1-6% (about 5.5x shorter)."""
  import numpy as np

  from srit_jax.data import pair_batches
  from srit_jax.data.sft_examples import TokenizedExample

  rng = np.random.default_rng(0)
  span = lambda low, high: int(rng.integers(int(low * max_length), int(high * max_length) + 1))
  out = []
  for _ in range(count):
    prompt = list(rng.integers(0, vocab, span(0.06, 0.25)))
    sides = []
    for low, high in ((0.12, 0.60), (0.01, 0.06)):
      answer = list(rng.integers(0, vocab, span(low, high)))
      sides.append(TokenizedExample(prompt + answer, [0] * len(prompt) + [1] * len(answer)))
    out.append(pair_batches.TokenizedPair(*sides))
  return out


def _with_reference(model, host: list[dict]) -> None:
  """Each batch of `host` given the reference's answer log-probs (the untrained model's), as refine
  precomputes them before training."""
  import jax

  from srit_jax import sharding
  from srit_jax.training import dpo_step

  reference = jax.tree.map(lambda x: x.astype(model.config.dtype), model.params)
  score = jax.jit(lambda p, b: dpo_step.pair_log_probs(model.config, p, b, mesh=model.mesh))
  for batch in host:
    chosen, rejected = score(reference, sharding.shard_rows(batch, model.mesh))
    batch.update(ref_chosen_logps=jax.device_get(chosen), ref_rejected_logps=jax.device_get(rejected))


def _jit_step(model, config, tx, layout, precomputed: bool, loss_type: str, answer_positions: bool = False):
  """(state, LoRA base, our jitted step) for `config` on `layout`'s batches (listing their answer
  positions with `answer_positions`)."""
  from srit_jax.training import dpo_step

  state, base = common.initial_state(model, config, tx)
  step = dpo_step.jit_dpo_step(
    state,
    config,
    tx,
    model.mesh,
    precomputed_reference=precomputed,
    num_microbatches=_MICROBATCHES.value,
    branched=layout.packing == "shared_prompt",
    answer_positions=answer_positions,
    loss_type=loss_type,
  )
  return state, base, step


def epoch(model, pairs, layout, loss_type: str) -> dict:
  """--epoch_steps successive batches of a seeded epoch, trained with each batch's own rows and
  with the most any needs (the reference precomputed): seconds from the first step to the last,
  each row count compiled before."""
  import collections

  import jax

  from srit_jax import configs, sharding
  from srit_jax.data import pair_batches
  from srit_jax.training import optimizer

  steps, k = _EPOCH_STEPS.value, _MICROBATCHES.value
  tx = optimizer.make_optimizer(configs.load("optimizer"), 1000)
  most = pair_batches.PairBatchIterator(
    pairs, batch_size=_BATCH_SIZE.value, layout=layout, seed=0, num_microbatches=k
  ).needs_for_steps(steps)[0]
  figures, reference = {"steps": steps}, None
  for name, trim in (("most_rows", None), ("own_rows", 1)):
    iterator = pair_batches.PairBatchIterator(
      pairs, batch_size=_BATCH_SIZE.value, layout=layout, seed=0, num_microbatches=k, rows_per_microbatch=most
    )
    iterator.trim_rows = trim
    host = [next(iterator) for _ in range(steps)]
    if reference is None:  # per pair, in the seeded order both ways share: scored once
      _with_reference(model, host)
      reference = [{k: batch[k] for k in ("ref_chosen_logps", "ref_rejected_logps")} for batch in host]
    else:
      for batch, logps in zip(host, reference):
        batch.update(logps)
    on_mesh = [sharding.shard_rows(batch, model.mesh) for batch in host]
    state, base, step = _jit_step(model, model.config, tx, layout, True, loss_type)
    rows = [batch["rows"]["tokens"].shape[0] for batch in host]
    for first in {r: batch for r, batch in zip(rows, on_mesh)}.values():  # compile each row count
      state, metrics = step(state, None, first, base)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in on_mesh:
      state, metrics = step(state, None, batch, base)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    figures[name] = {
      "seconds": seconds,
      "pairs_per_s": steps * _BATCH_SIZE.value / seconds,
      "rows_per_step": dict(sorted(collections.Counter(rows).items())),
      "rows": sum(rows),
    }
  figures["own_rows_speedup"] = figures["most_rows"]["seconds"] / figures["own_rows"]["seconds"]
  figures["row_share"] = figures["own_rows"]["rows"] / figures["most_rows"]["rows"]
  return figures


def ours(
  model,
  batches,
  layout,
  precomputed: bool,
  rows: int,
  loss_type: str = "sigmoid",
  config=None,
  answer_positions: int = 0,
) -> dict:
  """Our step on `batches` (a list of index lists, one per call, cycled) of the pairs in `layout`,
  of `config` (default the model's; with LoRA, its adapters over the frozen base, the reference
  precomputed); the output layer at `answer_positions` a row (0: at every position)."""
  import jax

  from srit_jax import configs, sharding
  from srit_jax.data import pair_batches
  from srit_jax.training import optimizer

  pairs, index_lists = batches
  k = _MICROBATCHES.value
  tx = optimizer.make_optimizer(configs.load("optimizer"), 1000)
  host = [
    pair_batches.make_pair_batch(pairs, indices, layout, rows, num_microbatches=k, answer_positions=answer_positions)
    for indices in index_lists
  ]
  reference = None
  if precomputed:  # one pass over the pairs, before training
    _with_reference(model, host)
  else:
    reference = jax.tree.map(lambda x: x.astype(model.config.dtype), model.params)
  config = config or model.config
  state, base, step = _jit_step(model, config, tx, layout, precomputed, loss_type, bool(answer_positions))
  on_mesh = [sharding.shard_rows(batch, model.mesh) for batch in host]
  start = time.perf_counter()
  compiled = step.lower(state, reference, on_mesh[0], base).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cycle = itertools.cycle(on_mesh)

  def one():
    nonlocal state
    state, metrics = compiled(state, reference, next(cycle), base)
    jax.block_until_ready(metrics)

  step_s = common.median_seconds(one)
  common.profile(one)
  tokens = sum(int((b["rows"]["segment_ids"] > 0).sum()) for b in host) / len(host)
  positions = host[0]["rows"]["tokens"].size
  return {
    "step_s": step_s,
    "compile_s": compile_s,
    "temp_bytes": int(memory.temp_size_in_bytes),
    "argument_bytes": int(memory.argument_size_in_bytes),
    "lora_rank": config.lora_rank,
    "rows": rows * k,
    "row_length": layout.row_length,
    "answer_positions": answer_positions,
    "positions_per_step": positions,
    "padding_share": 1 - tokens / positions,
  }


def on_real_pairs(model, peak) -> dict:
  """Each packing on the same batches of real pairs, the reference precomputed."""
  from srit_jax.data import pair_batches, preference_pairs

  records = preference_pairs.read_pairs(_PAIRS_FILE.value)
  pairs = pair_batches.tokenize_pairs(model.tokenizer, records, _MAX_LENGTH.value)
  return {"pairs_file": _PAIRS_FILE.value, **each_packing(model, peak, pairs)}


def each_packing(model, peak, pairs) -> dict:
  """Each packing on the same batches of `pairs`, the reference precomputed."""
  from srit_jax.data import pair_batches
  from srit_jax.training import flops

  steps = common.WARMUP.value + common.REPEATS.value
  loss_type = _LOSS_TYPE.value
  runs = []
  for packing in _PACKINGS.value:
    for factor in [1] if packing == "none" else map(int, _PACK_LENGTHS.value):
      for chosen_only, rank, output_at in itertools.product(
        [False, True] if loss_type == "nll" else [False], map(int, _LORA_RANKS.value), _OUTPUT_AT.value
      ):
        layout = pair_batches.PairLayout(packing, factor * _MAX_LENGTH.value, chosen_only)
        iterator = pair_batches.PairBatchIterator(
          pairs, batch_size=_BATCH_SIZE.value, layout=layout, seed=0, num_microbatches=_MICROBATCHES.value
        )
        rows, most_answers = iterator.needs_for_steps(steps)
        answers = 0
        if output_at == "answers":
          answers = pair_batches.answer_positions_per_row(most_answers, layout.row_length)
        index_lists = [iterator.next_indices() for _ in range(steps)]
        config = common.lora_config(model.config, rank) if rank else model.config
        figures = ours(model, (pairs, index_lists), layout, not chosen_only, rows, loss_type, config, answers)
        step_flops = flops.dpo_step_flops(config, figures["rows"], layout.row_length, False, answers or None)
        figures.update(
          packing=packing,
          chosen_only=chosen_only,
          output_at=output_at,
          pairs_per_s=_BATCH_SIZE.value / figures["step_s"],
          mfu=step_flops / figures["step_s"] / peak,
        )
        if _EPOCH_STEPS.value and not chosen_only and not rank:
          figures["epoch"] = epoch(model, pairs, layout, loss_type)
        runs.append(figures)
        what = f"{packing} x{factor}{', chosen only' if chosen_only else ''}{f', LoRA rank {rank}' if rank else ''}"
        what += f", output layer at {f'{answers} answer positions a row' if answers else 'every position'}"
        print(f"{what}: {figures['pairs_per_s']:.3f} pairs/s, padding {figures['padding_share']:.2f}")
  unpacked = next((r for r in runs if r["packing"] == "none" and not r["chosen_only"] and not r["lora_rank"]), None)
  for run in runs:
    if unpacked:
      run["speedup_over_one_row_per_side"] = unpacked["step_s"] / run["step_s"]
  lengths = [(len(p.chosen.tokens), len(p.rejected.tokens), p.shared_prefix()) for p in pairs]
  mean = lambda i: sum(x[i] for x in lengths) / len(lengths)
  return {
    "pairs": len(pairs),
    "loss_type": loss_type,
    "batch_size": _BATCH_SIZE.value,
    "max_length": _MAX_LENGTH.value,
    "mean_tokens": {"chosen_side": mean(0), "rejected_side": mean(1), "shared_prompt": mean(2)},
    "runs": runs,
  }


def torch_step(config, batch, beta: float = 0.1) -> dict:
  import copy

  import numpy as np
  import torch

  device = common.torch_device()
  policy = common.torch_model(config)
  reference = copy.deepcopy(policy).eval().requires_grad_(False)
  policy.train()
  opt = torch.optim.AdamW(policy.parameters(), lr=1e-6, weight_decay=0.0, fused=device.type == "cuda")
  tensor = lambda x, dtype=torch.long: torch.as_tensor(np.asarray(x), dtype=dtype, device=device)
  rows = batch["rows"]  # one row per side
  ids, labels = tensor(rows["tokens"]), tensor(rows["targets"])
  weights, slots = tensor(rows["loss_weights"], torch.float32), tensor(rows["answer_slots"]).flatten()
  pairs = len(batch["chosen_lengths"])

  def answer_log_probs(model):
    """(chosen, rejected) summed answer log-probs per pair."""
    with common.torch_autocast():
      logits = model(ids).logits.float()
    per_token = torch.gather(logits.log_softmax(-1), 2, labels[..., None])[..., 0]
    sums = torch.zeros(2 * pairs + 1, device=device).index_add(0, slots, (per_token * weights).flatten())
    return sums[0 : 2 * pairs : 2], sums[1 : 2 * pairs : 2]

  def one():
    with torch.no_grad():
      ref = answer_log_probs(reference)
    logps = answer_log_probs(policy)
    margin = (logps[0] - ref[0]) - (logps[1] - ref[1])
    loss = -torch.nn.functional.logsigmoid(beta * margin).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    common.torch_sync()

  return {"step_s": common.median_seconds(one), "peak_memory_bytes": common.torch_peak_memory()}


def main(argv):
  del argv
  from srit_jax.data import pair_batches
  from srit_jax.training import flops

  baselines = common.baselines(("torch_eager",))
  if _PAIRS_FILE.value and not common.MODEL.value:
    raise app.UsageError("--pairs_file needs --model (its tokenizer renders the pairs)")
  model = common.model()
  peak = common.peak_flops()
  results = {"machine": common.machine(), "peak_tflops": peak / 1e12, "runs": []}
  if _PAIRS_FILE.value:
    results["real_pairs"] = on_real_pairs(model, peak)
    common.report(results)
    return
  if _UNEVEN_PAIRS.value:
    pairs = _uneven_pairs(_UNEVEN_PAIRS.value, _MAX_LENGTH.value, model.config.vocab_size)
    results["uneven_pairs"] = each_packing(model, peak, pairs)
    common.report(results)
    return
  for size in _SIZES.value:
    pairs, length = map(int, size.split("x"))
    tokenized = _random_pairs(pairs, length, model.config.vocab_size)
    layout = pair_batches.PairLayout("none", length)
    batch = pair_batches.make_pair_batch(tokenized, range(pairs), layout, 2 * pairs)
    run = {"pairs": pairs, "length_per_side": length, "microbatches": _MICROBATCHES.value}
    theirs = {baseline: common.release_torch(torch_step(model.config, batch)) for baseline in baselines}
    rows_per_microbatch = 2 * pairs // _MICROBATCHES.value
    for name, precomputed in (("in_step_reference", False), ("precomputed_reference", True)):
      figures = ours(model, (tokenized, [list(range(pairs))]), layout, precomputed, rows_per_microbatch)
      step_flops = flops.dpo_step_flops(model.config, 2 * pairs, length, not precomputed)
      figures.update(pairs_per_s=pairs / figures["step_s"], mfu=step_flops / figures["step_s"] / peak)
      run[name] = figures
    for baseline, figures in theirs.items():
      figures.update(
        pairs_per_s=pairs / figures["step_s"],
        ours_speedup=figures["step_s"] / run["in_step_reference"]["step_s"],
        mfu=flops.dpo_step_flops(model.config, 2 * pairs, length, True) / figures["step_s"] / peak,
      )
      run[baseline] = figures
    results["runs"].append(run)
  common.report(results)


if __name__ == "__main__":
  app.run(main)
