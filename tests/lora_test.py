"""LoRA and QLoRA: adapters that start as the base, train alone, export merged and for PEFT,
a quantized base within its stated error, and the DPO reference that is base + SFT adapters."""

import dataclasses
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config, subprocess_env, torch_logits
from random_pairs import pair_batch, pair_log_probs, random_pairs

from srit_jax import sharding
from srit_jax.conversion import hf_checkpoint, loading, peft
from srit_jax.model import decoder, lora
from srit_jax.training import dpo_step, sft_step
from srit_jax.training.state import create_train_state, state_shardings

TOKENS = np.asarray([[5, 17, 42, 8, 99, 3, 64, 21, 7, 13, 2, 77]], np.int32)


def _lora(rank=4, quantization="none", **fields):
  """A config's lora block: rank 4 over a float32 base unless told otherwise."""
  block = load_config("lora")
  block.update(rank=rank, base_quantization=quantization, base_dtype="float32", **fields)
  return block


def _batch(rows=4, length=12, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 128, (rows, length + 1))
  weights = np.zeros((rows, length), np.float32)
  weights[:, length // 2 :] = 1
  return {
    "tokens": jnp.asarray(tokens[:, :-1], jnp.int32),
    "targets": jnp.asarray(tokens[:, 1:], jnp.int32),
    "positions": jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (rows, length)),
    "segment_ids": jnp.ones((rows, length), jnp.int32),
    "loss_weights": jnp.asarray(weights),
  }


def _tx(lr=1e-2):
  from srit_jax.training import optimizer

  cfg = load_config("optimizer")
  cfg.update(learning_rate=lr, warmup_steps=0, schedule="constant")
  return optimizer.make_optimizer(cfg, 100)


def _train(model, steps=3, mesh=None, batch=None, lr=1e-2):
  tx = _tx(lr)
  state = create_train_state(model.adapters, tx)
  step = jax.jit(lambda s, b, base: sft_step.sft_step(s, b, base, config=model.config, optimizer=tx, mesh=mesh))
  batch = batch if batch is not None else _batch()
  for _ in range(steps):
    state, metrics = step(state, batch, model.params)
  return state, metrics


def test_fresh_adapters_leave_the_model_exactly_the_base(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  base = loading.load_model(directory)
  adapted = loading.load_model(directory, lora=_lora())
  assert adapted.adapters is not None and adapted.config.lora_rank == 4
  np.testing.assert_array_equal(np.asarray(adapted.logits(TOKENS)), np.asarray(base.logits(TOKENS)))
  # The adapters shard like their base matrices.
  names = decoder.boxed_adapter_shapes(adapted.config)["layers"]["attention"]["q_proj"]
  assert names["lora_a"].names == ("layers", "embed", None) and names["lora_b"].names == (
    "layers",
    None,
    "q_heads",
    "head_dim",
  )


def test_only_the_adapters_train_and_the_base_stays_bit_identical(hf_model_dir):
  directory, _ = hf_model_dir("qwen2_bias")
  model = loading.load_model(directory, lora=_lora())
  base_before = jax.tree.map(np.asarray, model.params)
  state, metrics = _train(model)
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, model.params), base_before)
  b = state.params["layers"]["attention"]["q_proj"]["lora_b"]
  assert float(jnp.abs(b).max()) > 0  # B moved away from zero
  adapter_shapes = {x.shape for x in jax.tree.leaves(state.params)}
  for leaf in jax.tree.leaves(state.opt_state):
    assert leaf.shape == () or leaf.shape in adapter_shapes  # no optimizer state shaped like the base


def test_merged_export_and_the_peft_adapter_give_the_adapted_logits(hf_model_dir, tmp_path):
  import torch
  import transformers
  from peft import PeftModel

  directory, _ = hf_model_dir("llama")
  model = loading.load_model(directory, lora=_lora())
  state, _ = _train(model, steps=5)
  trained = dataclasses.replace(model, adapters=state.params)
  ours = np.asarray(trained.logits(TOKENS))
  assert not np.allclose(ours, np.asarray(model.logits(TOKENS)), atol=1e-4)  # training changed the model

  merged = lora.merge_adapters(model.params, state.params, model.config)
  hf_checkpoint.save_hf_checkpoint(merged, model.config.without_adapters(), tmp_path / "merged")
  np.testing.assert_allclose(np.asarray(loading.load_model(tmp_path / "merged").logits(TOKENS)), ours, atol=1e-5)

  peft.save_peft_adapter(state.params, model.config, tmp_path / "adapter", base_model=str(directory))
  hf_base = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager")
  with torch.no_grad():
    peft_model = PeftModel.from_pretrained(hf_base, str(tmp_path / "adapter")).eval()
  np.testing.assert_allclose(torch_logits(peft_model, TOKENS), ours, atol=1e-4)

  # And the adapter directory is a starting point: imported, the same model.
  imported = loading.load_model(directory, lora=_lora(rank=2, init_adapter=str(tmp_path / "adapter")))
  assert imported.config.lora_rank == 4  # the adapter's own rank applies
  np.testing.assert_allclose(np.asarray(imported.logits(TOKENS)), ours, atol=1e-6)


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_a_quantized_base_is_within_its_stated_error(kind):
  rng = np.random.default_rng(0)
  kernel = jnp.asarray(rng.normal(size=(3, 96, 4, 16)), jnp.float32)  # [layers, in, heads, head_dim]
  codes, scales = lora.quantize(kernel, kind, 64, 2)
  restored = lora.dequantize(codes, scales, kind, 2, jnp.float32)
  assert codes.dtype == (jnp.int8 if kind == "int8" else jnp.uint8)
  assert codes.nbytes * (2 if kind == "nf4" else 1) == kernel.size  # one or half a byte per weight
  # Every element within half a quantization step of its block's absmax (blocks of 48 | 96).
  blocks = np.abs(np.asarray(kernel)).reshape(3, 2, 48, 4, 16).max(axis=2, keepdims=True)
  bound = np.broadcast_to(blocks, (3, 2, 48, 4, 16)).reshape(kernel.shape) * lora.MAX_RELATIVE_ERROR[kind]
  assert np.all(np.abs(np.asarray(restored) - np.asarray(kernel)) <= bound + 1e-7)


@pytest.mark.parametrize("kind,tolerance", [("int8", 0.02), ("nf4", 0.5)])
def test_qlora_forward_is_the_base_within_quantization_error(hf_model_dir, kind, tolerance):
  directory, _ = hf_model_dir("llama")
  base = np.asarray(loading.load_model(directory).logits(TOKENS))
  quantized = loading.load_model(directory, lora=_lora(quantization=kind))
  assert quantized.params["layers"]["attention"]["q_proj"]["kernel_codes"].dtype == (
    jnp.int8 if kind == "int8" else jnp.uint8
  )
  error = np.max(np.abs(np.asarray(quantized.logits(TOKENS)) - base)) / np.max(np.abs(base))
  # Measured on this tiny random model (weights of std 0.15, three layers compounding): int8 0.003,
  # nf4 0.33 of the largest logit. On the real SmolLM2 see test_qlora_on_smollm2.
  assert error < tolerance, error
  _, metrics = _train(quantized, steps=8)  # and the adapters still train over it
  assert metrics["loss"] < _train(quantized, steps=1)[1]["loss"]


@pytest.mark.slow
def test_dpo_with_lora_starts_at_log_2_against_base_plus_sft_adapters(hf_model_dir, tmp_path):
  directory, _ = hf_model_dir("llama")
  model = loading.load_model(directory, lora=_lora())
  sft_state, _ = _train(model, steps=4)
  peft.save_peft_adapter(sft_state.params, model.config, tmp_path / "sft_adapter", base_model=str(directory))
  merged = lora.merge_adapters(model.params, sft_state.params, model.config)
  hf_checkpoint.save_hf_checkpoint(merged, model.config.without_adapters(), tmp_path / "sft_export")

  student = loading.load_model(directory, lora=_lora(init_adapter=str(tmp_path / "sft_adapter")))
  reference = jax.tree.map(lambda x: x.copy(), student.adapters)  # base + SFT adapters, no second base
  pairs = pair_batch(random_pairs(4, seed=1), "shared_prompt", 24)
  # The reference's log-probs equal those of the SFT export run as a whole model.
  ours = pair_log_probs(student.config, reference, pairs, base=student.params)
  export = loading.load_model(tmp_path / "sft_export")
  full = pair_log_probs(export.config, export.params, pairs)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(full), atol=1e-4)

  tx = _tx(1e-3)
  state = create_train_state(student.adapters, tx)
  step = jax.jit(lambda s, r, b, base: dpo_step.dpo_step(s, r, b, base, config=student.config, optimizer=tx))
  base_before = jax.tree.map(np.asarray, student.params)
  state, metrics = step(state, reference, pairs, student.params)
  assert float(metrics["loss"]) == pytest.approx(np.log(2), abs=1e-5)
  assert float(metrics["rewards/margins"]) == pytest.approx(0.0, abs=1e-6)
  state, metrics = step(state, reference, pairs, student.params)
  assert float(metrics["rewards/margins"]) > 0
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, student.params), base_before)


@pytest.mark.slow
def test_sharded_lora_steps_equal_one_device(hf_model_dir):
  directory, _ = hf_model_dir("llama")
  alone = loading.load_model(directory, lora=_lora(quantization="int8"))
  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  on_mesh = loading.load_model(directory, lora=_lora(quantization="int8"), mesh=mesh)
  batch = _batch(rows=8)
  single, single_metrics = _train(alone, steps=2, batch=batch)
  tx = _tx()
  state = create_train_state(jax.tree.map(lambda x: x.copy(), on_mesh.adapters), tx)  # the step donates it
  state = jax.device_put(state, state_shardings(state, on_mesh.config, mesh))
  step = sft_step.jit_sft_step(state, on_mesh.config, tx, mesh)
  batch_on_mesh = jax.device_put(batch, sft_step.batch_shardings(mesh))
  for _ in range(2):
    state, metrics = jax.block_until_ready(step(state, batch_on_mesh, on_mesh.params))  # one run at a time: conftest
  np.testing.assert_allclose(metrics["loss"], single_metrics["loss"], rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), state.params, single.params
  )
  # DPO on the mesh, reference adapters in the step, equals one device too.
  pairs = pair_batch(random_pairs(8, seed=1), "shared_prompt", 24, rows=8)
  dpo_tx = _tx(1e-3)
  results = []
  for model, m in ((alone, None), (on_mesh, mesh)):
    st = create_train_state(model.adapters, dpo_tx)
    ref = jax.tree.map(lambda x: x.copy(), model.adapters)
    if m is None:
      fn = jax.jit(lambda s, r, b, base, c=model.config: dpo_step.dpo_step(s, r, b, base, config=c, optimizer=dpo_tx))
      args = pairs
    else:
      st = jax.device_put(st, state_shardings(st, model.config, m))
      fn = dpo_step.jit_dpo_step(st, model.config, dpo_tx, m, precomputed_reference=False, branched=True)
      args = jax.device_put(pairs, dpo_step.pair_batch_shardings(m, False, branched=True))
    for _ in range(2):
      st, dpo_metrics = jax.block_until_ready(fn(st, ref, args, model.params))  # one run at a time: conftest
    results.append((st, dpo_metrics))
  np.testing.assert_allclose(results[1][1]["loss"], results[0][1]["loss"], rtol=1e-5)


@pytest.mark.parametrize(
  "change,message",
  [
    ({"targets": "q,qq"}, "lora targets ['qq'] are not projections of this model"),
    ({"rank": 1000}, "lora rank 1000 exceeds the smaller side of the q projection (48 x 48)"),
    ({"quantization": "fp3"}, "base_quantization 'fp3' is not one of"),
  ],
)
def test_impossible_adapters_are_clear_errors(hf_model_dir, change, message):
  directory, _ = hf_model_dir("llama")
  with pytest.raises(ValueError, match=re.escape(message)):
    loading.load_model(directory, lora=_lora(**change))


def test_an_adapter_of_another_architecture_is_a_clear_error(hf_model_dir, tmp_path):
  directory, _ = hf_model_dir("llama")
  model = loading.load_model(directory, lora=_lora())
  peft.save_peft_adapter(model.adapters, model.config, tmp_path / "adapter", base_model="x")
  other, _ = hf_model_dir("tied_gqa")  # 2 key/value heads of 8, not of 12: other k and v shapes
  with pytest.raises(
    peft.AdapterError,
    match=re.escape("tensor 'base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight' has shape [24, 4]"),
  ):
    loading.load_model(other, lora=_lora(init_adapter=str(tmp_path / "adapter")))
  (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
  with pytest.raises(peft.AdapterError, match="field 'peft_type' is 'PREFIX_TUNING'; only LORA adapters are read"):
    loading.load_model(directory, lora=_lora(init_adapter=str(tmp_path / "adapter")))


def test_the_configs_lora_block_reaches_sft(tiny_with_tokenizer, tmp_path):
  from srit_jax.phases import sft

  records = tmp_path / "demos.jsonl"
  records.write_text("".join(json.dumps({"instruction": f"Add {i}.", "output": f"{i}."}) + "\n" for i in range(8)))
  config = load_config("sft", "tiny")
  config.update(model=str(tiny_with_tokenizer), train_file=str(records), num_steps=2, save_every=2)
  config.mesh.update(data=1, fsdp=1, tensor=1)
  config.lora.update(rank=4, base_quantization="int8")
  result = sft.train(config, tmp_path / "run")
  assert (tmp_path / "run/export/model.safetensors").exists()
  adapter = json.loads((tmp_path / "run/export_adapter/adapter_config.json").read_text())
  assert adapter["r"] == 4 and adapter["peft_type"] == "LORA"
  assert all(jax.tree.leaves(jax.tree.map(lambda x: 4 in x.shape, result.state.params)))  # adapters only


@pytest.mark.slow
def test_the_pipeline_refines_the_sft_adapters_against_themselves(tiny_student, tmp_path):
  from conftest import load_tiny_pipeline_config

  from srit_jax.phases import pipeline

  config = load_tiny_pipeline_config()
  config.student = str(tiny_student)
  config.sft.lora.update(rank=4, base_dtype="float32")
  pipeline.run(config, tmp_path, progress=False)
  for phase in ("sft", "refine"):
    assert (tmp_path / phase / "export" / "model.safetensors").exists()  # merged, for transformers
    assert (tmp_path / phase / "export_adapter" / "adapter_model.safetensors").exists()  # for PEFT
  summary = json.loads((tmp_path / "refine" / "refine_summary.json").read_text())
  # The policy starts as base + SFT adapters, and so does the reference: margins 0, loss log 2.
  assert summary["heldout_before"]["eval/rewards/margins"] == 0.0
  assert summary["heldout_before"]["eval/loss"] == pytest.approx(np.log(2), abs=1e-6)


@pytest.mark.slow
def test_killed_lora_sft_resumes_to_the_same_adapters_bit_for_bit(tiny_with_tokenizer, tmp_path):
  import pathlib
  import subprocess
  import sys

  from conftest import checkpoint_being_saved, kill_at_moments

  records = tmp_path / "demos.jsonl"
  records.write_text("".join(json.dumps({"instruction": f"Add {i}.", "output": f"{i} + 1."}) + "\n" for i in range(24)))
  base = [
    sys.executable, "-m", "srit_jax.cli", "sft", "--config=configs/sft.py:tiny",
    f"--config.model={tiny_with_tokenizer}", f"--config.train_file={records}", "--config.mesh.fsdp=1",
    "--config.num_steps=10", "--config.lora.rank=4", "--config.lora.base_quantization=int8",
  ]  # fmt: skip
  env = subprocess_env(1)
  root = pathlib.Path(__file__).parents[1]
  subprocess.run([*base, f"--workdir={tmp_path / 'full'}"], check=True, env=env, capture_output=True, cwd=root)
  workdir = tmp_path / "killed"
  moments = [
    ("during a checkpoint save", lambda: checkpoint_being_saved(workdir / "checkpoints")),
    ("after the checkpoint of step 4", lambda: (workdir / "checkpoints" / "4").exists()),
  ]
  assert kill_at_moments([*base, f"--workdir={workdir}"], moments, env=env, cwd=root)
  subprocess.run([*base, f"--workdir={workdir}"], check=True, env=env, capture_output=True, cwd=root)
  name = "export_adapter/adapter_model.safetensors"
  assert (workdir / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
  # Checkpoints hold the adapters only.
  saved = sum(p.stat().st_size for p in (workdir / "checkpoints" / "10").rglob("*") if p.is_file())
  base_bytes = (tiny_with_tokenizer / "model.safetensors").stat().st_size
  assert saved < base_bytes, (saved, base_bytes)


@pytest.mark.slow
def test_qlora_on_smollm2_is_near_the_base_and_learns(smollm2_dir):
  base = loading.load_model(smollm2_dir)
  tokens = np.asarray([base.tokenizer("The capital of France is Paris. The answer is 42.")["input_ids"]], np.int32)
  reference = np.asarray(base.logits(tokens))
  top = reference.argmax(-1)
  for kind, tolerance, agree in (("int8", 0.05, 0.9), ("nf4", 0.5, 0.6)):
    quantized = loading.load_model(smollm2_dir, lora=_lora(rank=8, quantization=kind))
    logits = np.asarray(quantized.logits(tokens))
    error = np.max(np.abs(logits - reference)) / np.max(np.abs(reference))
    agreement = np.mean(logits.argmax(-1) == top)
    print(f"{kind}: max logit error {error:.4f} of the largest logit, top-1 agreement {agreement:.2f}")
    assert error < tolerance and agreement >= agree
  # QLoRA (nf4) adapters overfit one batch: the loss falls.
  length = tokens.shape[1] - 1
  batch = _batch(rows=2, length=length)
  batch.update(tokens=jnp.asarray(np.tile(tokens[:, :-1], (2, 1))), targets=jnp.asarray(np.tile(tokens[:, 1:], (2, 1))))
  _, first = _train(quantized, steps=1, batch=batch, lr=1e-3)
  _, last = _train(quantized, steps=12, batch=batch, lr=1e-3)
  assert float(last["loss"]) < 0.7 * float(first["loss"])
