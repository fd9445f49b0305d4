"""DPO: losses against closed forms, their properties, and the step against a frozen reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_pairs import pair_batch, pair_log_probs, random_pairs

from srit_jax import configs, sharding
from srit_jax.conversion import hf_checkpoint
from srit_jax.training import dpo_step as dpo
from srit_jax.training import optimizer
from srit_jax.training.state import create_train_state, state_shardings


def _numpy_loss(pc, pr, rc, rr, beta, loss_type, ls):
  h = (pc - rc) - (pr - rr)
  log_sigmoid = lambda x: -np.logaddexp(0.0, -x)
  if loss_type == "sigmoid":
    return -(1 - ls) * log_sigmoid(beta * h) - ls * log_sigmoid(-beta * h)
  if loss_type == "ipo":
    return (h - 1 / (2 * beta)) ** 2
  return np.maximum(0.0, 1 - beta * h)


@pytest.mark.parametrize("loss_type, ls", [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0)])
def test_losses_equal_closed_form(loss_type, ls):
  rng = np.random.default_rng(0)
  pc, pr, rc, rr = (rng.normal(-40, 10, 64) for _ in range(4))
  for beta in (0.05, 0.1, 0.5):
    per_pair, chosen_rewards, rejected_rewards = dpo.dpo_loss(
      pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=ls
    )
    np.testing.assert_allclose(per_pair, _numpy_loss(pc, pr, rc, rr, beta, loss_type, ls), rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(chosen_rewards, beta * (pc - rc), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(rejected_rewards, beta * (pr - rr), rtol=1e-5, atol=1e-4)


def test_dpop_is_dpo_with_a_penalty_where_the_chosen_answer_falls_below_the_reference():
  rng = np.random.default_rng(5)
  pc, pr, rc, rr = (rng.normal(-40, 10, 64) for _ in range(4))
  log_sigmoid = lambda x: -np.logaddexp(0.0, -x)
  h = (pc - rc) - (pr - rr)
  for beta, lam in ((0.1, 50.0), (0.5, 5.0)):
    dpop, chosen_rewards, rejected_rewards = dpo.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="dpop", dpop_lambda=lam)
    # DPO-Positive (Pal et al., 2024, eq. 3): -log σ(β (h - λ max(0, log π_ref(y_w) - log π(y_w))))
    np.testing.assert_allclose(dpop, -log_sigmoid(beta * (h - lam * np.maximum(0.0, rc - pc))), rtol=2e-5, atol=1e-5)
    np.testing.assert_allclose(chosen_rewards, beta * (pc - rc), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(rejected_rewards, beta * (pr - rr), rtol=1e-5, atol=1e-4)
  sigmoid, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="sigmoid")
  no_penalty, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="dpop", dpop_lambda=0.0)
  np.testing.assert_allclose(no_penalty, sigmoid, rtol=1e-6)
  above = pc >= rc  # the chosen answer at least as likely as under the reference: plain DPO
  dpop, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="dpop")
  np.testing.assert_allclose(np.asarray(dpop)[above], np.asarray(sigmoid)[above], rtol=1e-6)
  assert np.all(np.asarray(dpop)[~above] > np.asarray(sigmoid)[~above])

  # Below the reference, the chosen answer's log-prob gets a stronger push up than under DPO.
  def chosen_gradient(loss_type):
    loss = lambda c: dpo.dpo_loss(c, jnp.array([-30.0]), jnp.array([-10.0]), jnp.array([-40.0]), beta=0.1,
                                  loss_type=loss_type)[0].sum()  # fmt: skip
    return float(jax.grad(loss)(jnp.array([-12.0]))[0])

  assert chosen_gradient("dpop") < chosen_gradient("sigmoid") < 0


def _log_one_minus_exp(x):
  return np.log(-np.expm1(x))


@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_reference_free_losses_equal_their_papers_closed_forms_on_mean_log_probs(ls):
  rng = np.random.default_rng(3)
  pc, pr = rng.normal(-40, 10, (2, 64))
  lc, lr = rng.integers(5, 60, (2, 64)).astype(np.float64)
  ignored = np.full(64, np.nan)  # the reference: never read
  log_sigmoid = lambda x: -np.logaddexp(0.0, -x)
  ac, ar = pc / lc, pr / lr  # mean log-prob per answer token
  for beta, gamma in ((2.0, 0.5), (2.5, 1.4), (0.1, 0.0)):
    common = dict(beta=beta, chosen_lengths_B=lc, rejected_lengths_B=lr, label_smoothing=ls)
    simpo, chosen_rewards, rejected_rewards = dpo.dpo_loss(pc, pr, ignored, ignored, **common, loss_type="simpo",
                                                           simpo_gamma=gamma)  # fmt: skip
    z = beta * (ac - ar) - gamma  # SimPO: -log σ(β/|y_w| log π(y_w) - β/|y_l| log π(y_l) - γ)
    np.testing.assert_allclose(simpo, -(1 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(chosen_rewards, beta * ac, rtol=1e-5)
    np.testing.assert_allclose(rejected_rewards, beta * ar, rtol=1e-5)
    orpo, _, _ = dpo.dpo_loss(pc, pr, ignored, ignored, beta=beta, chosen_lengths_B=lc, rejected_lengths_B=lr,
                              loss_type="orpo")  # fmt: skip
    # ORPO: -λ log σ(log (odds(y_w) / odds(y_l))), odds = P / (1 - P), P the mean per-token probability
    log_odds = (ac - _log_one_minus_exp(ac)) - (ar - _log_one_minus_exp(ar))
    np.testing.assert_allclose(orpo, -beta * log_sigmoid(log_odds), rtol=2e-5, atol=1e-6)


def test_orpo_stays_finite_where_an_answer_is_certain_or_very_unlikely():
  chosen = jnp.array([0.0, -1e-9, -0.69, -0.7, -200.0])
  loss = lambda c: dpo.dpo_loss(c, jnp.full(5, -30.0), None, None, beta=0.1, loss_type="orpo",
                                chosen_lengths_B=jnp.ones(5), rejected_lengths_B=jnp.ones(5))[0].sum()  # fmt: skip
  assert np.isfinite(float(loss(chosen)))
  assert np.all(np.isfinite(np.asarray(jax.grad(loss)(chosen))))


@pytest.mark.parametrize("loss_type", dpo.LOSS_TYPES)
def test_raising_the_chosen_log_prob_lowers_the_loss(loss_type):
  base = dict(
    policy_rejected_logps_B=jnp.array([-20.0]),
    ref_chosen_logps_B=jnp.array([-15.0]),
    ref_rejected_logps_B=jnp.array([-18.0]),
    beta=0.1,
    loss_type=loss_type,
    chosen_lengths_B=jnp.array([6.0]),  # the normalisers of the nll, simpo and orpo loss types
    rejected_lengths_B=jnp.array([4.0]),
  )
  # Margins h = -8, -3, 2: below IPO's target 1/(2 beta) = 5, past which IPO pulls back by design.
  losses = [float(dpo.dpo_loss(jnp.array([c]), **base)[0][0]) for c in (-25.0, -20.0, -15.0)]
  assert losses[0] > losses[1] > losses[2]
  grad = jax.grad(lambda c: dpo.dpo_loss(c, **base)[0].sum())(jnp.array([-15.0]))
  assert grad[0] < 0


def test_label_smoothing_one_half_is_symmetric_in_chosen_and_rejected():
  rng = np.random.default_rng(1)
  pc, pr, rc, rr = (jnp.asarray(rng.normal(-30, 5, 16)) for _ in range(4))
  forward = dpo.dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=0.5)[0]
  swapped = dpo.dpo_loss(pr, pc, rr, rc, beta=0.3, label_smoothing=0.5)[0]
  np.testing.assert_allclose(forward, swapped, rtol=1e-6)


def test_doubling_beta_doubles_the_rewards():
  rng = np.random.default_rng(2)
  pc, pr, rc, rr = (jnp.asarray(rng.normal(-30, 5, 16)) for _ in range(4))
  _, c1, r1 = dpo.dpo_loss(pc, pr, rc, rr, beta=0.1)
  _, c2, r2 = dpo.dpo_loss(pc, pr, rc, rr, beta=0.2)
  np.testing.assert_allclose(c2, 2 * c1, rtol=1e-6)
  np.testing.assert_allclose(r2, 2 * r1, rtol=1e-6)


# --- The step on a tiny model ------------------------------------------------------------------


def _pairs(pairs=8, seed=0, packing="none", **options):
  return pair_batch(random_pairs(pairs, seed=seed), packing, **options)


def _tx():
  cfg = configs.load("optimizer")
  cfg.learning_rate, cfg.warmup_steps, cfg.eps = 1e-3, 0, 1e-5
  return optimizer.make_optimizer(cfg, 10)


@pytest.fixture
def tiny(hf_model_dir):
  return hf_checkpoint.load_hf_checkpoint(hf_model_dir("llama")[0])


def _run(config, params, ref, batch, steps=1, **options):
  tx = _tx()
  state = create_train_state(params, tx)
  step = jax.jit(lambda s, r, b: dpo.dpo_step(s, r, b, config=config, optimizer=tx, **options))
  for _ in range(steps):
    state, metrics = step(state, ref, batch)
  return state, metrics


def test_at_step_zero_the_sigmoid_loss_is_log_2_and_rewards_are_zero(tiny):
  config, params = tiny
  _, metrics = _run(config, params, params, _pairs())
  assert float(metrics["loss"]) == pytest.approx(math.log(2), abs=1e-6)
  for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
    assert float(metrics[name]) == pytest.approx(0.0, abs=1e-6)


def test_precomputed_reference_equals_in_step_reference(tiny):
  config, params = tiny
  ref = jax.tree.map(lambda x: x * 1.01, params)  # a reference that differs from the policy
  batch = _pairs()
  ref_chosen, ref_rejected = pair_log_probs(config, ref, batch)
  precomputed = dict(batch, ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
  state_a, metrics_a = _run(config, params, ref, batch)
  state_b, metrics_b = _run(config, params, None, precomputed)
  np.testing.assert_allclose(metrics_b["loss"], metrics_a["loss"], rtol=1e-6)
  np.testing.assert_allclose(metrics_b["grad_norm"], metrics_a["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state_b.params, state_a.params)


def test_the_dpop_step_takes_its_lambda(tiny):
  config, params = tiny
  ref = jax.tree.map(lambda x: x * 1.01, params)  # some chosen answers likelier under it than the policy
  batch = _pairs()
  policy, reference = pair_log_probs(config, params, batch), pair_log_probs(config, ref, batch)
  for lam in (0.0, 3.0):
    _, metrics = _run(config, params, ref, batch, loss_type="dpop", dpop_lambda=lam)
    per_pair, _, _ = dpo.dpo_loss(*policy, *reference, beta=0.1, loss_type="dpop", dpop_lambda=lam)
    np.testing.assert_allclose(metrics["loss"], np.mean(per_pair), rtol=1e-5)
  assert bool(np.any(np.asarray(reference[0]) > np.asarray(policy[0])))  # so that λ mattered


def test_training_raises_reward_accuracy_and_leaves_the_reference_bit_identical(tiny):
  config, params = tiny
  ref = jax.tree.map(jnp.copy, params)
  before = jax.tree.map(np.asarray, ref)
  _, first = _run(config, params, ref, _pairs(), steps=1, beta=0.5)
  _, last = _run(config, params, ref, _pairs(), steps=8, beta=0.5)
  assert float(last["rewards/margins"]) > float(first["rewards/margins"])
  assert float(last["rewards/accuracies"]) == 1.0
  assert float(last["loss"]) < math.log(2)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, ref), before)


def test_nll_term_adds_each_chosen_answers_length_normalised_cross_entropy(tiny):
  config, params = tiny
  batch = _pairs()
  chosen, _ = pair_log_probs(config, params, batch)
  # RPO's term: the mean over pairs of -log p(chosen) / |chosen|, pairs of uneven answer lengths.
  expected_nll = np.mean(-np.asarray(chosen) / batch["chosen_lengths"])
  assert len(set(batch["chosen_lengths"])) > 2
  _, plain = _run(config, params, params, batch)
  _, zero = _run(config, params, params, batch, nll_weight=0.0)
  _, with_nll = _run(config, params, params, batch, nll_weight=0.5)
  assert float(zero["loss"]) == float(plain["loss"]) and float(zero["grad_norm"]) == float(plain["grad_norm"])
  assert float(with_nll["loss"]) == pytest.approx(float(plain["loss"]) + 0.5 * expected_nll, rel=1e-5)
  assert float(plain["nll/chosen"]) == pytest.approx(expected_nll, rel=1e-5)
  _, alone = _run(config, params, params, batch, loss_type="nll")
  assert float(alone["loss"]) == pytest.approx(expected_nll, rel=1e-5)


def test_the_nll_loss_type_is_cross_entropy_on_the_chosen_answers_only(tiny):
  config, params = tiny
  batch = _pairs()
  grads = {}
  for name, other_rejected in (("a", 0), ("b", 1)):
    changed = jax.tree.map(np.copy, batch)
    rows = changed["rows"]
    rejected = rows["answer_slots"] % 2 == 1
    rows["tokens"][rejected] = (rows["tokens"][rejected] + 7 * other_rejected) % 128
    loss = lambda p, b=changed: dpo.dpo_loss(
      *pair_log_probs(config, p, b), *pair_log_probs(config, params, b), beta=0.1, loss_type="nll",
      chosen_lengths_B=b["chosen_lengths"],
    )[0].mean()  # fmt: skip
    grads[name] = jax.grad(loss)(params)
  # The rejected answers' tokens changed, the gradient did not: only the chosen answers count.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-7), grads["a"], grads["b"])


def test_the_nll_step_trains_on_chosen_rows_alone_without_a_reference(tiny):
  config, params = tiny
  options = dict(packing="shared_prompt", row_length=40)
  whole_state, whole = _run(config, params, params, _pairs(**options), loss_type="nll")  # the reference unread
  state, metrics = _run(config, params, None, _pairs(chosen_only=True, **options), loss_type="nll")
  assert set(metrics) == {"loss", "grad_norm", "logps/chosen", "nll/chosen", "tokens", "rows"}  # no reward without one
  assert int(metrics["tokens"]) < int(whole["tokens"])
  for name, value in metrics.items():
    if name not in ("tokens", "rows"):
      np.testing.assert_allclose(value, whole[name], rtol=1e-5, err_msg=name)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state.params, whole_state.params)


@pytest.mark.parametrize("loss_type", ["simpo", "orpo"])
def test_reference_free_steps_train_without_a_reference_and_report_their_rewards(tiny, loss_type):
  config, params = tiny
  batch = _pairs()
  chosen, rejected = pair_log_probs(config, params, batch)
  expected, _, _ = dpo.dpo_loss(
    chosen, rejected, None, None, beta=2.0, loss_type=loss_type,
    chosen_lengths_B=batch["chosen_lengths"], rejected_lengths_B=batch["rejected_lengths"],
  )  # fmt: skip
  _, first = _run(config, params, None, batch, beta=2.0, loss_type=loss_type)  # no reference tree at all
  assert float(first["loss"]) == pytest.approx(float(np.mean(expected)), rel=1e-5)
  assert float(first["rewards/chosen"]) == pytest.approx(float(2.0 * np.mean(chosen / batch["chosen_lengths"])), 1e-5)
  _, last = _run(config, params, None, batch, steps=8, beta=2.0, loss_type=loss_type)
  assert float(last["rewards/margins"]) > float(first["rewards/margins"])
  assert float(last["loss"]) < float(first["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("precomputed", [False, True])
def test_microbatched_step_equals_one_pass(tiny, precomputed):
  config, params = tiny
  ref = jax.tree.map(lambda x: x * 1.01, params)
  batch = _pairs(pairs=8, packing="shared_prompt", row_length=24, num_microbatches=1)
  if precomputed:
    ref_chosen, ref_rejected = pair_log_probs(config, ref, batch)
    batch = dict(batch, ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
    ref = None
  options = dict(steps=2, nll_weight=0.3, beta=0.5)
  whole_state, whole = _run(config, params, ref, batch, **options)
  for k in (2, 4):
    # With 4, the rows also list their answer positions (dealt with the rows).
    dealt = _pairs(pairs=8, packing="shared_prompt", row_length=24, num_microbatches=k, answers=k == 4)
    if precomputed:
      dealt.update(ref_chosen_logps=batch["ref_chosen_logps"], ref_rejected_logps=batch["ref_rejected_logps"])
    state, metrics = _run(config, params, ref, dealt, num_microbatches=k, **options)
    for name, value in whole.items():
      if name != "rows":  # each microbatch's rows round up on their own
        np.testing.assert_allclose(metrics[name], value, rtol=2e-5, atol=1e-6, err_msg=f"{name}, {k} microbatches")
    # Two Adam steps (eps 1e-5) magnify the summation-order differences of near-zero gradients.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=5e-6), state.params, whole_state.params)


@pytest.mark.slow
@pytest.mark.parametrize("precomputed", [False, True])
def test_sharded_dpo_step_equals_single_device(hf_model_dir, precomputed):
  directory = hf_model_dir("llama")[0]
  config, params = hf_checkpoint.load_hf_checkpoint(directory)
  ref = jax.tree.map(lambda x: x * 1.01, params)
  batch = _pairs()
  if precomputed:
    ref_chosen, ref_rejected = pair_log_probs(config, ref, batch)
    batch = dict(batch, ref_chosen_logps=np.asarray(ref_chosen), ref_rejected_logps=np.asarray(ref_rejected))
  single, single_metrics = _run(config, params, None if precomputed else ref, batch, steps=2)

  mesh = sharding.make_mesh(sharding.MeshConfig(2, 2, 2))
  tx = _tx()
  _, mesh_params = hf_checkpoint.load_hf_checkpoint(directory, mesh=mesh)
  state = create_train_state(mesh_params, tx)
  shardings = state_shardings(state, config, mesh)
  state = jax.device_put(state, shardings)
  mesh_ref = None if precomputed else jax.device_put(ref, shardings.params)
  # The sharded run's rows list their answer positions: the output layer there alone.
  listed = _pairs(answers=True)
  batch = {**batch, "rows": listed["rows"]}
  step = dpo.jit_dpo_step(state, config, tx, mesh, precomputed_reference=precomputed, answer_positions=True)
  mesh_batch = jax.device_put(batch, dpo.pair_batch_shardings(mesh, precomputed, answer_positions=True))
  assert mesh_batch["rows"]["tokens"].shape[0] % 4 == 0
  for _ in range(2):
    state, metrics = jax.block_until_ready(step(state, mesh_ref, mesh_batch, None))  # one run at a time: conftest
  np.testing.assert_allclose(metrics["loss"], single_metrics["loss"], rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5), state.params, single.params
  )
