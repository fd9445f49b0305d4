"""The SFT step: closed-form loss, golden values, sharding, accumulation, packing and masks."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import TINY_TOKENIZER, make_hf_model
from jax.sharding import NamedSharding, PartitionSpec

from srit_jax import configs, sharding
from srit_jax.conversion import hf_checkpoint
from srit_jax.data import sft_examples as sft_data
from srit_jax.model import decoder as model_lib
from srit_jax.training import losses, optimizer
from srit_jax.training import sft_step as train_step
from srit_jax.training.state import create_train_state, state_shardings


def _examples(lengths, prompt_lengths, seed=0, vocab=128):
  rng = np.random.default_rng(seed)
  return [
    sft_data.TokenizedExample(rng.integers(3, vocab, n).tolist(), [0] * p + [1] * (n - p))
    for n, p in zip(lengths, prompt_lengths)
  ]


EXAMPLES = _examples([9, 12, 7, 15, 6, 11, 8, 13], [4, 5, 3, 6, 2, 7, 3, 5])


def _tiny(hf_model_dir, family="llama"):
  directory, torch_model = hf_model_dir(family)
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  return config, params, torch_model


def _optimizer(lr=1e-2, clip=1.0, eps=1e-8):
  cfg = configs.load("optimizer")
  cfg.learning_rate, cfg.warmup_steps, cfg.clip_norm, cfg.weight_decay, cfg.eps = lr, 0, clip, 0.01, eps
  return optimizer.make_optimizer(cfg, total_steps=10)


def _batch(examples=EXAMPLES, row_length=16, pack=False, normalization="token"):
  rows = sft_data.pack_rows(examples, row_length, pack=pack)
  return sft_data.make_batch(examples, rows, row_length, normalization).as_dict()


def _step(config, params, batch, tx, **kwargs):
  state = create_train_state(params, tx)
  step = jax.jit(lambda s, b: train_step.sft_step(s, b, config=config, optimizer=tx, **kwargs))
  return step(state, batch)


def test_loss_equals_cross_entropy_of_transformers_logits_on_answer_tokens(hf_model_dir):
  import torch

  config, params, torch_model = _tiny(hf_model_dir)
  batch = _batch()
  _, metrics = _step(config, params, batch, _optimizer(), chunk_size=5)
  with torch.no_grad():
    logits = torch_model(torch.as_tensor(batch["tokens"], dtype=torch.long)).logits.double().numpy()
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
  log_probs -= logits.max(-1, keepdims=True)
  target_log_probs = np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
  expected = -(target_log_probs * batch["loss_weights"]).sum() / batch["loss_weights"].sum()
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=1e-5)
  assert int(metrics["loss_tokens"]) == sum(sum(e.loss_mask[1:]) for e in EXAMPLES)


def test_golden_one_step(hf_model_dir):
  config, params, _ = _tiny(hf_model_dir)
  state, metrics = _step(config, params, _batch(pack=True), _optimizer())
  after = train_step.sft_step(state, _batch(pack=True), config=config, optimizer=_optimizer())[1]
  golden = {"loss": 5.492023, "grad_norm": 5.470418, "loss_after_one_step": 3.355567}
  got = {
    "loss": float(metrics["loss"]),
    "grad_norm": float(metrics["grad_norm"]),
    "loss_after_one_step": float(after["loss"]),
  }
  for name, value in golden.items():
    assert got[name] == pytest.approx(value, rel=1e-4), (
      f"{name} changed: {got}. Update these golden values only for an intended change of the "
      "model, the loss, the optimizer or the tiny test config (conftest.make_hf_model), and say so in the commit."
    )


def test_chunked_log_probs_equal_full_log_softmax(hf_model_dir):
  config, params, _ = _tiny(hf_model_dir)
  model = model_lib.Transformer(config)
  batch = _batch()
  hidden = model.apply({"params": params}, batch["tokens"], method="hidden_states")
  logits = np.asarray(model.apply({"params": params}, hidden, method="logits_from_hidden"), np.float64)
  full = jax.nn.log_softmax(logits, -1)
  expected = np.take_along_axis(np.asarray(full), batch["targets"][..., None], -1)[..., 0]
  for chunk in (1, 5, 16, 64):
    got = losses.chunked_token_log_probs(model, params, hidden, jnp.asarray(batch["targets"]), chunk)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_packed_and_unpacked_batches_give_the_same_loss_and_gradients(hf_model_dir, normalization):
  config, params, _ = _tiny(hf_model_dir)
  model_loss = jax.jit(
    jax.value_and_grad(
      lambda p, b: train_step.batch_nll_sum(p, b, config=config, mesh=None, chunk_size=16) / jnp.sum(b["loss_weights"])
    )
  )
  packed = _batch(row_length=32, pack=True, normalization=normalization)
  unpacked = _batch(row_length=16, pack=False, normalization=normalization)
  assert packed["tokens"].shape[0] < unpacked["tokens"].shape[0]
  loss_packed, grads_packed = model_loss(params, packed)
  loss_unpacked, grads_unpacked = model_loss(params, unpacked)
  np.testing.assert_allclose(loss_packed, loss_unpacked, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads_packed, grads_unpacked)


@pytest.mark.parametrize("microbatches", [2, 4])
def test_gradient_accumulation_equals_one_large_batch(hf_model_dir, microbatches):
  config, params, _ = _tiny(hf_model_dir)
  batch = _batch()
  # Plain SGD: parameters move by the gradient itself, which Adam would renormalise per element.
  tx = optax.sgd(0.1)
  state_one, metrics_one = _step(config, params, batch, tx)
  state_k, metrics_k = _step(config, params, batch, tx, num_microbatches=microbatches)
  np.testing.assert_allclose(metrics_k["loss"], metrics_one["loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics_k["grad_norm"], metrics_one["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state_k.params, state_one.params)


@pytest.mark.parametrize(
  "mesh_config", [sharding.MeshConfig(2, 2, 2), sharding.MeshConfig(1, 8, 1), sharding.MeshConfig(8, 1, 1)]
)
def test_sharded_steps_equal_single_device_steps(hf_model_dir, mesh_config):
  config, params, _ = _tiny(hf_model_dir)
  batch = _batch()
  # AdamW divides each gradient by its own magnitude, so an element whose gradient is ~1e-9 turns
  # summation-order noise into a full-size step; eps=1e-5 keeps such elements comparable.
  tx = _optimizer(lr=1e-3, eps=1e-5)
  single = create_train_state(params, tx)
  single_step = jax.jit(lambda s, b: train_step.sft_step(s, b, config=config, optimizer=tx))
  mesh = sharding.make_mesh(mesh_config)
  directory = hf_model_dir("llama")[0]
  _, sharded_params = hf_checkpoint.load_hf_checkpoint(directory, mesh=mesh)
  sharded = create_train_state(sharded_params, tx)
  sharded = jax.device_put(sharded, state_shardings(sharded, config, mesh))
  sharded_step = train_step.jit_sft_step(sharded, config, tx, mesh)
  batch_on_mesh = jax.device_put(batch, train_step.batch_shardings(mesh))
  for _ in range(3):
    single, single_metrics = single_step(single, batch)
    sharded, sharded_metrics = jax.block_until_ready(sharded_step(sharded, batch_on_mesh, None))  # see conftest
  np.testing.assert_allclose(sharded_metrics["loss"], single_metrics["loss"], rtol=1e-5)
  kernel = sharded.params["layers"]["mlp"]["up_proj"]["kernel"]
  assert kernel.sharding.spec == sharding.logical_to_spec(("layers", "embed", "mlp"), kernel.shape, mesh)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), sharded.params, single.params
  )


def test_weight_decay_skips_norms_and_biases(hf_model_dir):
  _config, params, _ = _tiny(hf_model_dir, "qwen2_bias")
  mask = optimizer.decay_mask(params)
  assert mask["layers"]["attention"]["q_proj"]["kernel"] and mask["embedder"]["embedding"]
  assert not mask["layers"]["attention"]["q_proj"]["bias"]
  assert not mask["layers"]["input_norm"]["scale"] and not mask["final_norm"]["scale"]


def test_schedules_warm_up_then_decay():
  cfg = configs.load("optimizer")
  cfg.learning_rate, cfg.warmup_steps, cfg.end_lr_fraction = 1.0, 4, 0.1
  for kind in optimizer.SCHEDULES:
    cfg.schedule = kind
    schedule = optimizer.learning_rate_schedule(cfg, total_steps=14)
    assert schedule(0) == 0.0 and schedule(2) == pytest.approx(0.5) and schedule(4) == pytest.approx(1.0)
    assert schedule(14) == pytest.approx(1.0 if kind == "constant" else 0.1)


# --- Data: masks, truncation, templates ---------------------------------------------------------


@pytest.fixture(scope="module")
def chat_tokenizer():
  """A byte-level BPE with a ChatML template, like SmolLM2's (tests/testdata/tiny_tokenizer)."""
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))


def test_prompt_tokens_carry_no_loss(chat_tokenizer):
  prompt, answer = sft_data.tokenize_example(
    chat_tokenizer, "Add the numbers.", "2 and 3", "2 + 3 = 5. The answer is 5."
  )
  example = sft_data.fit_to_length(prompt, answer, 256)
  masked = [t for t, m in zip(example.tokens, example.loss_mask) if m]
  unmasked = [t for t, m in zip(example.tokens, example.loss_mask) if not m]
  assert chat_tokenizer.decode(masked) == "2 + 3 = 5. The answer is 5.<|im_end|>\n"
  assert chat_tokenizer.decode(unmasked).endswith("Add the numbers.\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n")


def test_a_template_that_drops_the_answer_is_an_error(chat_tokenizer):
  import copy

  tokenizer = copy.deepcopy(chat_tokenizer)
  tokenizer.chat_template = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
  )
  with pytest.raises(sft_data.EmptyLossMaskError, match="no answer token carries loss"):
    sft_data.tokenize_example(tokenizer, "Q?", "", "the answer")


def test_long_prompts_are_cut_from_the_left_and_long_answers_dropped_and_counted():
  stats = sft_data.TokenizeStats()
  example = sft_data.fit_to_length(list(range(100, 130)), [7, 8, 9], 12, stats=stats)
  assert example.tokens == [*list(range(121, 130)), 7, 8, 9] and example.loss_mask == [0] * 9 + [1] * 3
  assert sft_data.fit_to_length([1, 2, 3], list(range(20)), 12, stats=stats) is None
  assert (stats.kept, stats.prompt_truncated, stats.dropped_too_long) == (1, 1, 1)


def test_plain_template_for_base_models(chat_tokenizer):
  prompt, answer = sft_data.tokenize_example(chat_tokenizer, "Q?", "", "A.", use_chat_template=False)
  assert chat_tokenizer.decode(prompt) == "### Instruction:\nQ?\n\n### Response:\n"
  assert answer[-1] == chat_tokenizer.eos_token_id


def test_make_hf_model_is_deterministic():
  a, b = make_hf_model("llama", seed=3), make_hf_model("llama", seed=3)
  assert all((x == y).all() for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_bfloat16_compute_keeps_float32_master_weights(hf_model_dir):
  import dataclasses

  config, params, _ = _tiny(hf_model_dir)
  mixed = dataclasses.replace(config, dtype="bfloat16")
  state, metrics = _step(mixed, params, _batch(), _optimizer())
  _, reference = _step(config, params, _batch(), _optimizer())
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  np.testing.assert_allclose(metrics["loss"], reference["loss"], rtol=2e-2)


def test_a_fresh_state_on_a_mesh_takes_its_second_step_without_compiling_again():
  """The step returns the state's scalars (step, optimizer counts) on the mesh; a fresh state
  holds them there too, or the second call would see other input shardings and compile again."""
  mesh = sharding.make_mesh(sharding.MeshConfig(1, 2, 1))
  params = {"w": jax.device_put(jnp.ones((4, 8)), NamedSharding(mesh, PartitionSpec(None, "fsdp")))}
  tx = optax.adamw(1e-3)

  @jax.jit
  def step(state):
    updates, opt_state = tx.update(state.params, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)

  state = create_train_state(params, tx)
  for _ in range(3):
    state = step(state)
  assert int(state.step) == 3 and step._cache_size() == 1
