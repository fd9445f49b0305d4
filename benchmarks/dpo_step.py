"""DPO step throughput (pairs per second), MFU, compile time and memory, beside a PyTorch step.

    python benchmarks/dpo_step.py                                            # SmolLM2-135M, CPU
    python benchmarks/dpo_step.py --preset=tinyllama-1.1b --dtype=bfloat16 --sizes=8x1024 \\
        --baseline=torch_eager                                                # on a GPU

Ours: `dpo_step` (sigmoid loss, beta 0.1, AdamW with clipping, state donated), jitted once over
every local device, in two forms: the frozen reference run inside the step, and reference
log-probabilities precomputed (the step then runs the policy only). Baseline `torch_eager`: the
same loss in `transformers` — reference forward under `no_grad`, policy forward over chosen and
rejected rows, summed answer log-probs, `-logsigmoid(beta * margin)`, backward, clip, AdamW —
with bfloat16 autocast when ours computes in bfloat16. A pair is two rows of `length` positions
(the second half of each row is its answer). MFU as in train_step.py, on 2 x pairs rows.
"""

from __future__ import annotations

import time

import common
from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["4x256"], "pairs x positions per side")
_MICROBATCHES = flags.DEFINE_integer("microbatches", 1, "gradient accumulation of ours")


def _side(pairs, length, vocab, seed):
  import numpy as np

  tokens = np.random.default_rng(seed).integers(0, vocab, (pairs, length + 1)).astype(np.int32)
  weights = np.zeros((pairs, length), np.float32)
  weights[:, length // 2 :] = 1.0
  return {
    "tokens": tokens[:, :-1],
    "targets": tokens[:, 1:],
    "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (pairs, length)).copy(),
    "segment_ids": np.ones((pairs, length), np.int32),
    "loss_weights": weights,
  }


def ours(model, batch, precomputed: bool) -> dict:
  import jax

  from srit_jax import configs, sharding
  from srit_jax.training import dpo_step, optimizer
  from srit_jax.training.state import create_train_state, state_shardings

  tx = optimizer.make_optimizer(configs.load("optimizer"), 1000)
  reference = jax.tree.map(lambda x: x.astype(model.config.dtype), model.params)
  batch = dict(batch)
  if precomputed:  # one pass over the pairs, before training
    chosen, rejected = jax.jit(lambda p, b: dpo_step.reference_log_probs(model.config, p, b, mesh=model.mesh))(
      reference, sharding.shard_rows(batch, model.mesh)
    )
    batch.update(ref_chosen_logps=jax.device_get(chosen), ref_rejected_logps=jax.device_get(rejected))
    reference = None
  state = create_train_state(jax.tree.map(lambda x: x.copy(), model.params), tx)
  state = jax.device_put(state, state_shardings(state, model.config, model.mesh))
  step = dpo_step.jit_dpo_step(
    state, model.config, tx, model.mesh, precomputed_reference=precomputed, num_microbatches=_MICROBATCHES.value
  )
  on_mesh = sharding.shard_rows(batch, model.mesh)
  start = time.perf_counter()
  compiled = step.lower(state, reference, on_mesh, None).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()

  def one():
    nonlocal state
    state, metrics = compiled(state, reference, on_mesh, None)
    jax.block_until_ready(metrics)

  step_s = common.median_seconds(one)
  common.profile(one)
  return {
    "step_s": step_s,
    "compile_s": compile_s,
    "temp_bytes": int(memory.temp_size_in_bytes),
    "argument_bytes": int(memory.argument_size_in_bytes),
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
  tensor = lambda x, dtype=torch.long: torch.as_tensor(x, dtype=dtype, device=device)
  both = lambda field: np.concatenate([batch["chosen"][field], batch["rejected"][field]])
  ids, labels = tensor(both("tokens")), tensor(both("targets"))
  weights = tensor(both("loss_weights"), torch.float32)

  def answer_log_probs(model):
    with common.torch_autocast():
      logits = model(ids).logits.float()
    per_token = torch.gather(logits.log_softmax(-1), 2, labels[..., None])[..., 0]
    return (per_token * weights).sum(-1)

  def one():
    with torch.no_grad():
      ref = answer_log_probs(reference)
    logps = answer_log_probs(policy)
    pairs = logps.shape[0] // 2
    margin = (logps[:pairs] - ref[:pairs]) - (logps[pairs:] - ref[pairs:])
    loss = -torch.nn.functional.logsigmoid(beta * margin).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    common.torch_sync()

  return {"step_s": common.median_seconds(one), "peak_memory_bytes": common.torch_peak_memory()}


def main(argv):
  del argv
  from srit_jax.training import flops

  baselines = common.baselines(("torch_eager",))
  model = common.model()
  peak = common.peak_flops()
  results = {"machine": common.machine(), "peak_tflops": peak / 1e12, "runs": []}
  for size in _SIZES.value:
    pairs, length = map(int, size.split("x"))
    batch = {
      "chosen": _side(pairs, length, model.config.vocab_size, 0),
      "rejected": _side(pairs, length, model.config.vocab_size, 1),
    }
    run = {"pairs": pairs, "length_per_side": length, "microbatches": _MICROBATCHES.value}
    theirs = {baseline: common.release_torch(torch_step(model.config, batch)) for baseline in baselines}
    for name, precomputed in (("in_step_reference", False), ("precomputed_reference", True)):
      figures = ours(model, batch, precomputed)
      step_flops = flops.dpo_step_flops(model.config, pairs, length, not precomputed)
      figures.update(pairs_per_s=pairs / figures["step_s"], mfu=step_flops / figures["step_s"] / peak)
      run[name] = figures
    for baseline, figures in theirs.items():
      figures.update(
        pairs_per_s=pairs / figures["step_s"],
        ours_speedup=figures["step_s"] / run["in_step_reference"]["step_s"],
        mfu=flops.dpo_step_flops(model.config, pairs, length, True) / figures["step_s"] / peak,
      )
      run[baseline] = figures
    results["runs"].append(run)
  common.report(results)


if __name__ == "__main__":
  app.run(main)
