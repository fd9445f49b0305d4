"""Attention kernels alone: forward + backward time and error on packed rows, per kernel.

    python benchmarks/attention.py --preset=tinyllama-1.1b --dtype=bfloat16 --sizes=8x2048 \\
        --kernels=xla,blockwise,cudnn,cudnn_mask,cudnn_causal          # on a GPU

A model preset gives the heads and head size; each row packs `--segments` segments of random
lengths (the last leaves some padding). Every kernel computes the same function — causal inside
each segment, nothing across segments — and is timed as one jitted forward + backward (the
gradient of a random projection of its output with respect to q, k and v). Errors are the
largest |difference| of output and gradients from float32 XLA attention on the same inputs,
over the positions that belong to a segment (padding's outputs get no gradient). Kernels:
  xla           the model's XLA kernel (`attention.attend`): the [B, T, S] mask materialised
  blockwise     the model's online-softmax kernel over key blocks (any backend)
  cudnn         the model's cuDNN kernel: causal mode plus the segment mask
  cudnn_mask    cuDNN given the dense [B, 1, T, S] mask alone (it takes it as a bias)
  cudnn_causal  cuDNN causal over whole rows, ignoring segments: the speed bound, wrong on
                packed rows (its error is reported)
"""

from __future__ import annotations

import common
from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["2x256"], "batch x length")
_KERNELS = flags.DEFINE_list("kernels", ["xla", "blockwise"], "kernels to time")
_SEGMENTS = flags.DEFINE_integer("segments", 3, "packed segments per row")


def _inputs(config, batch, length, segments, seed=0):
  import numpy as np

  rng = np.random.default_rng(seed)
  shape = (batch, length)
  q = rng.standard_normal((*shape, config.num_heads, config.head_dim)).astype(np.float32)
  k = rng.standard_normal((*shape, config.num_kv_heads, config.head_dim)).astype(np.float32)
  v = rng.standard_normal((*shape, config.num_kv_heads, config.head_dim)).astype(np.float32)
  cotangent = rng.standard_normal(q.shape).astype(np.float32)
  segment_ids = np.zeros(shape, np.int32)
  positions = np.zeros(shape, np.int32)
  for row in range(batch):
    cuts = np.sort(rng.choice(np.arange(1, int(length * 0.9)), segments, replace=False))
    cuts[-1] = int(length * 0.9)  # the last tenth is padding
    start = 0
    for index, end in enumerate(cuts):
      segment_ids[row, start:end] = index + 1
      positions[row, start:end] = np.arange(end - start)
      start = end
  cotangent[segment_ids == 0] = 0.0  # padding's outputs carry no loss, as in training
  return q, k, v, cotangent, segment_ids, positions


def kernel_fn(name: str, scale: float):
  import jax

  from srit_jax.model import attention

  if name in ("xla", "blockwise", "cudnn"):  # the model's own kernels, as it calls them
    return lambda q, k, v, s, p: attention.attend(
      q,
      k,
      v,
      q_positions_BxT=p,
      q_segment_ids_BxT=s,
      kv_positions_BxS=p,
      kv_segment_ids_BxS=s,
      scale=scale,
      kernel=name,
    )
  if name == "cudnn_mask":
    return lambda q, k, v, s, p: jax.nn.dot_product_attention(
      q, k, v, mask=attention.attention_mask(p, s, p, s), scale=scale, implementation="cudnn"
    )
  if name == "cudnn_causal":
    return lambda q, k, v, s, p: jax.nn.dot_product_attention(
      q, k, v, scale=scale, is_causal=True, implementation="cudnn"
    )
  raise app.UsageError(f"unknown kernel {name}")


def time_kernel(name, inputs, dtype, reference) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  q, k, v, cotangent, segments, positions = inputs
  scale = q.shape[-1] ** -0.5
  attend = kernel_fn(name, scale)

  def loss(q, k, v):
    out = attend(q, k, v, segments, positions)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
  cast = [jnp.asarray(x, dtype) for x in (q, k, v)]
  try:
    (_, out), grads = step(*cast)
  except Exception as error:  # a kernel that this backend or these shapes cannot run
    return {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
  inside = np.asarray(segments != 0)[:, :, None, None]
  figures = {"seconds": common.median_seconds(lambda: jax.block_until_ready(step(*cast)))}
  if reference is not None:
    ref_out, ref_grads = reference
    figures["max_error_out"] = float(np.max(np.abs(np.where(inside, np.asarray(out, np.float32) - ref_out, 0))))
    figures["max_error_grads"] = max(
      float(np.max(np.abs(np.asarray(g, np.float32) - r))) for g, r in zip(grads, ref_grads)
    )
  return figures


def main(argv):
  del argv
  import jax
  import jax.numpy as jnp
  import numpy as np

  from srit_jax.model import presets

  config = presets.get_preset(common.PRESET.value)
  results = {"machine": common.machine(), "segments": _SEGMENTS.value, "runs": []}
  for size in _SIZES.value:
    batch, length = map(int, size.split("x"))
    inputs = _inputs(config, batch, length, _SEGMENTS.value)
    q, k, v, cotangent, segments, positions = inputs
    xla = kernel_fn("xla", q.shape[-1] ** -0.5)

    def loss(q, k, v, xla=xla, segments=segments, positions=positions, cotangent=cotangent):
      out = xla(q, k, v, segments, positions)
      return jnp.sum(out * cotangent), out

    with jax.default_matmul_precision("highest"):
      (_, ref_out), ref_grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    reference = (np.asarray(ref_out), [np.asarray(g) for g in ref_grads])
    run = {"batch": batch, "length": length}
    for name in _KERNELS.value:
      run[name] = time_kernel(name, inputs, common.DTYPE.value, reference)
      print(name, size, run[name], flush=True)
    results["runs"].append(run)
  common.report(results)


if __name__ == "__main__":
  app.run(main)
