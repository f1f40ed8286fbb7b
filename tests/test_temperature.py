"""The temperature leaf: reparameterisations against closed forms, and each optimizer mode."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from modgap_jax import temperature
from modgap_jax.errors import ConfigError

REFERENCE_BETA = {  # float64 closed forms of MATH.md §1
  "exp": lambda nu, s: np.exp(nu),
  "softplus": lambda nu, s: np.log1p(np.exp(nu)),
  "exp_scaled": lambda nu, s: np.exp(nu / s),
}
REFERENCE_DBETA = {
  "exp": lambda nu, s: np.exp(nu),
  "softplus": lambda nu, s: 1.0 / (1.0 + np.exp(-nu)),
  "exp_scaled": lambda nu, s: np.exp(nu / s) / s,
}


@pytest.mark.parametrize("name", temperature.REPARAMS)
def test_reparam_matches_closed_form_and_inverts_exactly(name):
  rp = temperature.Reparam(name, scale=3.0)
  with jax.enable_x64(True):
    nu = np.linspace(-4.0, 8.0, 41)
    np.testing.assert_allclose(rp.beta(jnp.float64(nu)), REFERENCE_BETA[name](nu, 3.0), rtol=1e-13)
    np.testing.assert_allclose(rp.dbeta_dnu(jnp.float64(nu)), REFERENCE_DBETA[name](nu, 3.0), rtol=1e-13)
    np.testing.assert_allclose(rp.nu(rp.beta(jnp.float64(nu))), nu, rtol=1e-12, atol=1e-12)
    taus = np.array([0.005, 0.01, 0.04, 0.07, 0.4, 3.0])
    np.testing.assert_allclose(rp.tau(rp.nu_from_tau(jnp.float64(taus))), taus, rtol=1e-13)
  # float32: the round trip is exact to a few ulps.
  nu32 = jnp.linspace(-4.0, 8.0, 41, dtype=jnp.float32)
  np.testing.assert_allclose(rp.nu(rp.beta(nu32)), nu32, rtol=4e-6, atol=4e-6)


def test_clip_initialisation():
  spec = temperature.TemperatureSpec()
  np.testing.assert_allclose(spec.nu_init, np.log(1 / 0.07), rtol=1e-6)


def run_steps(spec, grads_fn, steps, lr=1e-2):
  params = {"image": {"kernel": jnp.ones((3, 2))}, "temperature": {"nu": jnp.float32(spec.nu_init)}}
  tx = temperature.route_temperature(optax.sgd(lr), spec, lr)
  state = tx.init(params)
  history = [params["temperature"]["nu"]]
  for k in range(steps):
    updates, state = tx.update(grads_fn(k, params), state, params)
    params = optax.apply_updates(params, updates)
    history.append(params["temperature"]["nu"])
  return params, np.array(history)


def random_grads(k, params):
  key = jax.random.PRNGKey(k)
  return jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)


def test_fixed_leaf_is_bit_identical_after_many_steps():
  spec = temperature.TemperatureSpec(mode="fixed", tau_init=0.04)
  params, history = run_steps(spec, random_grads, 200)
  assert np.all(history == np.float32(spec.nu_init))
  assert not np.allclose(params["image"]["kernel"], 1.0)  # the rest still trains


@pytest.mark.parametrize(
  "schedule",
  [
    optax.linear_schedule(0.01, 0.05, 50),
    optax.cosine_decay_schedule(0.2, 50, alpha=0.1),
    optax.piecewise_constant_schedule(0.07, {20: 0.5, 40: 0.5}),
  ],
)
def test_scheduled_leaf_equals_schedule_at_every_step(schedule):
  spec = temperature.TemperatureSpec(mode="scheduled", tau_schedule=schedule, reparam=temperature.Reparam("softplus"))
  _, history = run_steps(spec, random_grads, 60)
  expected_tau = np.array([float(schedule(k)) for k in range(61)], np.float64)
  got_tau = 1.0 / np.log1p(np.exp(np.float64(history)))
  np.testing.assert_allclose(got_tau, expected_tau, rtol=2e-6)


def test_slrt_scales_the_nu_update():
  constant = lambda k, params: jax.tree.map(jnp.ones_like, params)
  base = temperature.TemperatureSpec(beta_cap=None)
  slow = temperature.TemperatureSpec(beta_cap=None, lr_multiplier=0.1)
  _, h_base = run_steps(base, constant, 5)
  _, h_slow = run_steps(slow, constant, 5)
  # Adam's update is linear in its learning rate, so the ν steps shrink by exactly c.
  np.testing.assert_allclose(np.diff(h_slow), 0.1 * np.diff(h_base), rtol=1e-4)
  assert np.all(np.diff(h_base) < 0)


def test_beta_cap_holds():
  push_up = lambda k, params: {"image": {"kernel": jnp.zeros((3, 2))}, "temperature": {"nu": jnp.float32(-1.0)}}
  spec = temperature.TemperatureSpec(tau_init=0.0125, beta_cap=100.0)
  _, history = run_steps(spec, push_up, 100, lr=0.05)
  betas = np.exp(np.float64(history))
  assert betas.max() <= 100.0 * (1 + 1e-6)
  np.testing.assert_allclose(betas[-1], 100.0, rtol=1e-6)  # it did reach the cap


def test_no_weight_decay_on_nu():
  spec = temperature.TemperatureSpec(mode="learned", beta_cap=None)
  zero = lambda k, params: jax.tree.map(jnp.zeros_like, params)
  params = {"w": jnp.ones(3), "temperature": {"nu": jnp.float32(spec.nu_init)}}
  tx = temperature.route_temperature(optax.adamw(0.1, weight_decay=0.5), spec, 0.1)
  state = tx.init(params)
  for k in range(10):
    updates, state = tx.update(zero(k, params), state, params)
    params = optax.apply_updates(params, updates)
  assert params["temperature"]["nu"] == np.float32(spec.nu_init)
  assert np.all(params["w"] < 1.0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_tau_schedule_matches_its_formula_on_steps_and_continuous_time(kind):
  def want(t):  # MATH.md §4.1: τ_s + (τ_e − τ_s)·shape(min(t/T, 1)), T = 40
    frac = np.minimum(np.asarray(t, np.float64) / 40.0, 1.0)
    return 0.01 + 0.04 * (frac if kind == "linear" else (1.0 - np.cos(np.pi * frac)) / 2.0)

  schedule = temperature.TauSchedule(kind, 0.01, 0.05, duration=40)
  times = np.array([0.0, 0.5, 7.0, 13.25, 39.0, 40.0, 55.0])  # the flow's continuous time
  np.testing.assert_allclose(np.asarray(schedule(jnp.asarray(times))), want(times), rtol=1e-6)
  steps = np.arange(50)  # the trainer's int32 optimizer count
  np.testing.assert_allclose(np.asarray(schedule(jnp.asarray(steps, jnp.int32))), want(steps), rtol=1e-6)
  assert hash(schedule) == hash(temperature.TauSchedule(kind, 0.01, 0.05, duration=40))  # a jit static arg


def test_spec_from_config_and_errors():
  cfg = ml_collections.ConfigDict(
    {"mode": "scheduled", "reparam": "exp", "schedule": {"kind": "linear", "tau_start": 0.01, "tau_end": 0.05}}
  )
  spec = temperature.spec_from_config(cfg, schedule_duration=100)
  np.testing.assert_allclose(spec.tau_schedule(50), 0.03, rtol=1e-6)
  with pytest.raises(ConfigError, match="temperature.mode='warm'.*'learned', 'fixed', 'scheduled'"):
    temperature.spec_from_config(ml_collections.ConfigDict({"mode": "warm"}), 10)
  with pytest.raises(ConfigError, match="temperature.reparam"):
    temperature.Reparam("tanh")
  with pytest.raises(ConfigError, match="temperature.scale"):
    temperature.Reparam("exp_scaled", scale=0.5)
  with pytest.raises(ConfigError, match="temperature.schedule is required"):
    temperature.TemperatureSpec(mode="scheduled")
  with pytest.raises(ConfigError, match="beta_cap"):
    temperature.TemperatureSpec(tau_init=0.001, beta_cap=100.0)
  # Unbounded above, but never infinite or NaN: ν would be ±inf from the first step.
  for field in ("tau_init", "lr_multiplier"):
    for value, message in (
      (float("inf"), "must be finite"),
      (float("nan"), "must be finite"),
      ("0.1", "must be a number"),
    ):
      with pytest.raises(ConfigError, match=re.escape(f"temperature.{field}={value!r} {message}")):
        temperature.TemperatureSpec(**{field: value})
  with pytest.raises(ConfigError, match="temperature.schedule.duration=inf must be finite"):
    temperature.TauSchedule(duration=float("inf"))
