"""Tests for modgap_jax.dynamics: the flows of MATH.md §3 against independent references.

References: MATH.md §3.2's formulas re-implemented in float64 NumPy, ``scipy.integrate.solve_ivp``
and ``scipy.integrate.quad``, central finite differences, and the closed forms of
Lemma 3.1 and of the fixed-τ decay rate.
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.flatten_util  # noqa: F401  (jax.flatten_util.ravel_pytree)
import jax.numpy as jnp
import jax.test_util  # noqa: F401  (jax.test_util.check_grads)
import numpy as np
import pytest
from scipy import integrate, special

from modgap_jax import dynamics, losses, metrics
from modgap_jax.dynamics import analysis
from modgap_jax.errors import ConfigError
from modgap_jax.temperature import Reparam, TauSchedule, TemperatureSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPARAMS = (Reparam("exp"), Reparam("exp_scaled", 2.0), Reparam("softplus"))


def flow(model="reduced", reparam=Reparam("exp"), rate=1.0, tau0=0.07, reduced_rhs="closed_form", **temperature):
  """A FlowSpec whose temperature is uncapped unless ``temperature`` says otherwise."""
  fields = dict(reparam=reparam, tau_init=tau0, lr_multiplier=rate, beta_cap=None, **temperature)
  return dynamics.FlowSpec(model=model, temperature=TemperatureSpec(**fields), reduced_rhs=reduced_rhs)


def _load_config_module():
  spec = importlib.util.spec_from_file_location("dynamics_config", os.path.join(ROOT, "configs", "dynamics.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# --- independent float64 NumPy references (MATH.md §1, §3.2) -------------------------------


def np_beta(reparam, nu):
  if reparam.name == "exp":
    return np.exp(nu)
  if reparam.name == "softplus":
    return np.logaddexp(0.0, nu)
  return np.exp(nu / reparam.scale)


def np_nu(reparam, beta):
  if reparam.name == "exp":
    return np.log(beta)
  if reparam.name == "softplus":
    return beta + np.log(-np.expm1(-beta))
  return reparam.scale * np.log(beta)


def np_dbeta(reparam, nu):
  if reparam.name == "exp":
    return np.exp(nu)
  if reparam.name == "softplus":
    return special.expit(nu)
  return np.exp(nu / reparam.scale) / reparam.scale


def np_dloss_dkappa(s, kappa):
  """ℓ'(κ) straight from MATH.md §3.2, with row softmax P and column softmax Q."""
  n = s.shape[0]
  p = special.softmax(kappa * s, axis=1)
  q = special.softmax(kappa * s, axis=0)  # q[j, i] = e^{κ S_ji} / Σ_k e^{κ S_ki} = Q_ij
  return (np.sum(p * s) - np.trace(s) + np.sum(q * s) - np.trace(s)) / (2 * n)


def np_rhs(y, s, reparam, rate):
  nu, gamma = y
  beta = np_beta(reparam, nu)
  dl = np_dloss_dkappa(s, beta * (1 - gamma**2))
  return np.array([-rate * dl * (1 - gamma**2) * np_dbeta(reparam, nu), 2 * beta * gamma * dl])


def np_clip_loss(hx, hy, beta):
  z = beta * hx @ hy.T
  return 0.5 * (np.mean(special.logsumexp(z, axis=1) - np.diag(z)) + np.mean(special.logsumexp(z, axis=0) - np.diag(z)))


def _reduced_batch(spec, init, batch, seed=0):
  return dynamics.initial_states(spec, init, jax.random.PRNGKey(seed), batch)


def _at(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


# --- the loss and the right-hand side ---------------------------------------------------


def test_training_loss_and_gap_in_float64():
  """The flow differentiates losses.clip_loss, which must keep float64 (MATH.md §3.6)."""
  rng = np.random.default_rng(0)
  hx = rng.normal(size=(6, 4))
  hy = rng.normal(size=(6, 4))
  hx /= np.linalg.norm(hx, axis=1, keepdims=True)
  hy /= np.linalg.norm(hy, axis=1, keepdims=True)
  with jax.enable_x64(True):
    got = losses.clip_loss(jnp.asarray(hx), jnp.asarray(hy), jnp.float64(13.0))
    assert got.dtype == jnp.float64
    gap = dynamics.gap(jnp.asarray(hx), jnp.asarray(hy))
    tiny = dynamics.gap(jnp.full((3, 2), 1e-250), jnp.full((3, 2), -1e-250))
  np.testing.assert_allclose(float(got), np_clip_loss(hx, hy, 13.0), rtol=1e-13)
  np.testing.assert_allclose(float(gap), np.linalg.norm(hx.mean(0) - hy.mean(0)), rtol=1e-13)
  np.testing.assert_allclose(float(gap), float(metrics.modality_gap(hx, hy)), rtol=1e-6)
  np.testing.assert_allclose(float(tiny), 2 * np.sqrt(2) * 1e-250, rtol=1e-12)  # Δ² would underflow


@pytest.mark.parametrize("kind", ["matched", "uniform"])
def test_reduced_rhs_closed_form_numpy_and_autodiff_agree(kind):
  init = dynamics.InitSpec(n=6, d=5, kind=kind, gamma0=0.4)
  for reparam in REPARAMS:
    closed = flow("reduced", reparam, rate=0.3, tau0=0.2, reduced_rhs="closed_form")
    auto = flow("reduced", reparam, rate=0.3, tau0=0.2, reduced_rhs="autodiff")
    state0, data = _reduced_batch(closed, init, 1)
    state, data = _at(state0, 0), _at(data, 0)
    s = np.asarray(data["u"]) @ np.asarray(data["v"]).T
    for nu, gamma in [(float(state["nu"]), 0.4), (0.5, -0.7), (3.0, 0.05)]:
      point = {"nu": nu, "gamma": gamma}
      expected = np_rhs(np.array([nu, gamma]), s, reparam, 0.3)
      with jax.enable_x64(True):
        point = jax.tree.map(jnp.float64, point)
        t0 = jnp.float64(0.0)
        v_closed = dynamics.velocity(closed, point, t0, data)
        v_auto = dynamics.velocity(auto, point, t0, data)
        dl = dynamics.reduced_dloss_dkappa(jnp.asarray(s), jnp.float64(np_beta(reparam, nu) * (1 - gamma**2)))
      kappa = np_beta(reparam, nu) * (1 - gamma**2)
      np.testing.assert_allclose(float(dl), np_dloss_dkappa(s, kappa), rtol=1e-10, atol=1e-15)
      for got in (v_closed, v_auto):
        np.testing.assert_allclose([float(got["nu"]), float(got["gamma"])], expected, rtol=1e-9, atol=1e-14)


@pytest.mark.parametrize("model", ["parallel", "free"])
def test_flow_is_minus_gradient_by_central_differences(model):
  spec = flow(model, Reparam("softplus"), rate=0.5, tau0=0.3)
  init = dynamics.InitSpec(n=5, d=4, kind="uniform", gamma0=0.3, gap0=0.5)
  state0, data = _reduced_batch(spec, init, 1, seed=3)
  state, data = _at(state0, 0), _at(data, 0)
  with jax.enable_x64(True):
    state = jax.tree.map(jnp.float64, state)
    t0 = jnp.float64(0.0)
    vel = dynamics.velocity(spec, state, t0, data)
    loss_of = lambda s: dynamics.loss(spec, s, t0, data)
    jax.test_util.check_grads(loss_of, (state,), order=1, modes=("rev",), eps=1e-6, atol=1e-8, rtol=1e-7)
    flat, unravel = jax.flatten_util.ravel_pytree(state)
    rng = np.random.default_rng(1)
    for _ in range(3):
      direction = jnp.asarray(rng.normal(size=flat.shape))
      h = 1e-6
      fd = (loss_of(unravel(flat + h * direction)) - loss_of(unravel(flat - h * direction))) / (2 * h)
      # −∇L, with ν's component divided by c to undo the rate multiplier.
      grad = jax.tree.map(jnp.negative, vel)
      grad["nu"] = grad["nu"] / spec.rate
      np.testing.assert_allclose(
        float(jnp.dot(jax.flatten_util.ravel_pytree(grad)[0], direction)), float(fd), rtol=1e-7, atol=1e-10
      )


# --- trajectories -----------------------------------------------------------------------


@pytest.mark.parametrize("reparam", [Reparam("exp"), Reparam("softplus")], ids=["exp", "softplus"])
def test_reduced_trajectory_matches_solve_ivp(reparam):
  spec = flow("reduced", reparam, rate=0.5, tau0=0.1)
  init = dynamics.InitSpec(n=6, d=6, kind="matched", gamma0=0.3)
  state0, data = _reduced_batch(spec, init, 2, seed=4)
  t = dynamics.time_grid("log", 1e3, 31, t_min=1e-2)
  records, _ = dynamics.simulate(spec, state0, data, t, rtol=1e-11, atol=1e-300)
  for b in range(2):
    s = np.asarray(data["u"][b]) @ np.asarray(data["v"][b]).T
    y0 = [float(state0["nu"][b]), float(state0["gamma"][b])]
    ref = integrate.solve_ivp(
      lambda _, y: np_rhs(y, s, reparam, 0.5), (0.0, t[-1]), y0, method="DOP853", t_eval=t, rtol=1e-12, atol=1e-300
    )
    assert ref.success
    np.testing.assert_allclose(records["nu"][b], ref.y[0], rtol=1e-5)
    np.testing.assert_allclose(records["gamma"][b], ref.y[1], rtol=1e-5)
    np.testing.assert_allclose(records["beta"][b], np_beta(reparam, ref.y[0]), rtol=1e-5)
  # The reduced model's Δ² = (1−γ²)‖ū − v̄‖² + 4γ² (MATH.md §3.1); matched pairs: Δ = 2|γ|.
  np.testing.assert_allclose(records["gap"], 2 * np.abs(records["gamma"]), rtol=1e-12, atol=1e-300)


def test_temperature_integral_matches_quadrature():
  for reparam in REPARAMS:
    for rate in (1.0, 0.1):
      for beta in (0.3, 1.0, 4.0, 20.0, 60.0):
        integrand = lambda b: 2 * b / (rate * np_dbeta(reparam, np_nu(reparam, b)) ** 2)
        ref, _ = integrate.quad(integrand, dynamics.BETA_REF, beta, epsabs=1e-13, epsrel=1e-12, limit=200)
        with jax.enable_x64(True):
          got = float(dynamics.temperature_integral(reparam, rate, jnp.float64(beta)))
        np.testing.assert_allclose(got, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("reparam", REPARAMS, ids=lambda r: r.name)
def test_lemma31_invariant_is_conserved(reparam):
  spec = flow("reduced", reparam, rate=0.7)
  init = dynamics.InitSpec(n=8, d=8, kind="matched", gamma0=0.3)
  state0, data = _reduced_batch(spec, init, 2)
  records, _ = dynamics.simulate(spec, state0, data, dynamics.time_grid("log", 1e4, 41), rtol=1e-10, atol=1e-300)
  # The written invariant is MATH.md §3.3's I, recomputed here from (γ, β) alone.
  recomputed = (
    np.log(np.abs(records["gamma"]))
    - records["gamma"] ** 2 / 2
    + np.vectorize(
      lambda b: integrate.quad(
        lambda x: 2 * x / (0.7 * np_dbeta(reparam, np_nu(reparam, x)) ** 2), 1.0, b, epsabs=1e-13, epsrel=1e-12
      )[0]
    )(records["beta"])
  )
  np.testing.assert_allclose(records["invariant"], recomputed, rtol=1e-9, atol=1e-9)
  assert analysis.invariant_drift(records["invariant"]) < 1e-4
  assert np.all(np.diff(records["beta"], axis=1) > 0) and records["gamma"][:, -1].max() < 0.3


def test_lemma31_holds_with_moving_features():
  spec = flow("parallel", tau0=1.0)
  init = dynamics.InitSpec(n=8, d=5, kind="uniform", gamma0=0.2)
  state0, data = _reduced_batch(spec, init, 2)
  records, _ = dynamics.simulate(spec, state0, data, dynamics.time_grid("log", 1e3, 31), rtol=1e-10, atol=1e-14)
  assert analysis.invariant_drift(records["invariant"]) < 1e-4
  # The pairs re-match on the way (ℓ' changes sign), so I's conservation is not trivial.
  assert records["matched_frac"][:, 0].max() < 1 and np.all(records["matched_frac"][:, -1] == 1)


def test_theorem32_slow_closure_for_exp():
  spec = flow("reduced")
  init = dynamics.InitSpec(n=8, d=8, kind="matched", gamma0=0.3)
  state0, data = _reduced_batch(spec, init, 2)
  records, _ = dynamics.simulate(spec, state0, data, dynamics.time_grid("log", 1e6, 91), rtol=1e-10, atol=1e-300)
  out = analysis.theorem32(records["t"], records["beta"], records["gamma"], 1.0, 1e4, 1e6)
  assert out["beta_vs_log_t_r2"] > 0.99
  assert out["gamma_beta2_factor"] < 1.01  # γ·β² ≈ const (γ small) ...
  assert out["conserved_factor"] < 1 + 1e-7  # ... γ e^{−γ²/2} β² exactly
  assert out["gamma_log2t_factor"] < 1.5
  assert -2.0 < out["log_log_exponent"] < -1.0


def test_fixed_tau_decays_exponentially_at_the_closed_form_rate():
  spec = flow("reduced", tau0=0.2, mode="fixed")
  init = dynamics.InitSpec(n=6, d=6, kind="matched", gamma0=0.3)
  state0, data = _reduced_batch(spec, init, 1)
  records, _ = dynamics.simulate(spec, state0, data, dynamics.time_grid("linear", 200.0, 41), rtol=1e-10, atol=1e-300)
  assert np.all(records["beta"] == 5.0) and np.all(np.isnan(records["invariant"]))
  fit = analysis.exponential_decay(records["t"], records["gamma"], 100.0, 200.0)
  s = np.asarray(data["u"][0]) @ np.asarray(data["v"][0]).T
  # γ̇ = 2βγℓ'(β(1−γ²)) → γ·2βℓ'(β) once γ is small.
  np.testing.assert_allclose(fit["rate"], -2 * 5.0 * np_dloss_dkappa(s, 5.0), rtol=1e-3)
  assert fit["r2"] > 0.9999


def test_capped_beta_stops_at_the_cap_and_gamma_keeps_decaying():
  spec = dynamics.FlowSpec(model="reduced", temperature=TemperatureSpec(Reparam("exp"), tau_init=0.07, beta_cap=20.0))
  init = dynamics.InitSpec(n=8, d=8, kind="matched", gamma0=0.3)
  state0, data = _reduced_batch(spec, init, 1)
  records, _ = dynamics.simulate(spec, state0, data, dynamics.time_grid("log", 1e5, 51), rtol=1e-10, atol=1e-300)
  assert records["beta"].max() <= 20.0 * (1 + 1e-5)
  out = analysis.capped_regime(records["t"], records["beta"], records["gamma"], 20.0, 1e4, 1e5)
  assert out["reached_cap"] and out["share_at_cap_after"] == 1.0
  assert out["gamma_rate"] > 0 and out["gamma_rate_r2"] > 0.999


def test_scheduled_tau_follows_the_schedule():
  spec = flow("reduced", mode="scheduled", tau_schedule=TauSchedule("linear", 0.02, 0.05, duration=10.0))
  init = dynamics.InitSpec(n=4, d=4, kind="matched")
  state0, data = _reduced_batch(spec, init, 1)
  t = dynamics.time_grid("linear", 20.0, 21)
  records, _ = dynamics.simulate(spec, state0, data, t)
  np.testing.assert_allclose(records["tau"][0], np.interp(t, [0, 10, 20], [0.02, 0.05, 0.05]), rtol=1e-12)
  np.testing.assert_allclose(np_beta(Reparam("exp"), records["nu"][0]), records["beta"][0], rtol=1e-12)


def test_theorem33_gap_grows_from_uniform_inits():
  spec = flow("parallel")
  init = dynamics.InitSpec(n=8, d=3, kind="uniform", gamma0=0.2)
  state0, data = _reduced_batch(spec, init, 100)
  records, _ = dynamics.simulate(spec, state0, data, dynamics.time_grid("linear", 0.01, 3), rtol=1e-8, atol=1e-12)
  rise = analysis.gap_rise(records["t"], records["gap"], 0.01)
  assert rise["rising"] >= 90 and rise["mean_rise"] > 0
  assert np.mean(dynamics.initial_gap_velocity(spec, state0, data) > 0) >= 0.9


def test_initial_states():
  with jax.enable_x64(True):
    for kind in ("matched", "mismatched", "uniform"):
      spec = dynamics.FlowSpec(model="parallel")
      state, _ = dynamics.initial_state(spec, dynamics.InitSpec(n=7, d=4, kind=kind), jax.random.PRNGKey(1))
      s = np.asarray(state["w_x"] @ state["w_y"].T)
      np.testing.assert_allclose(np.linalg.norm(np.asarray(state["w_x"]), axis=1), 1.0, rtol=1e-12)
      if kind == "matched":
        np.testing.assert_allclose(np.diag(s), 1.0)
      if kind == "mismatched":  # a derangement: every image's own text is some other image's
        assert np.all(np.diag(s) < 1 - 1e-9) and np.allclose(np.sort(s.max(axis=0)), 1.0)
    free = dynamics.FlowSpec(model="free")
    for kind, target in (("mismatched", 0.37), ("uniform", 1.2)):
      state, data = dynamics.initial_state(
        free, dynamics.InitSpec(n=6, d=3, kind=kind, gap0=target), jax.random.PRNGKey(2)
      )
      hx, hy = dynamics.features(free, state, data)
      np.testing.assert_allclose(float(jnp.linalg.norm(hx.mean(0) - hy.mean(0))), target, rtol=1e-9)


def test_bad_inputs_are_one_line_config_errors():
  with pytest.raises(ConfigError, match="temperature.mode"):
    flow(mode="sometimes")
  with pytest.raises(ConfigError, match="model='ring'"):
    flow("ring")
  with pytest.raises(ConfigError, match="lr_multiplier=0 .*mode='fixed'"):
    flow(rate=0.0)
  with pytest.raises(ConfigError, match="tau_init=0.07 gives β above temperature.beta_cap=10"):
    dynamics.FlowSpec(temperature=TemperatureSpec(beta_cap=10.0))
  with pytest.raises(ConfigError, match="temperature.schedule.duration"):
    TauSchedule(duration=0.0)
  with pytest.raises(ConfigError, match="init.kind"):
    dynamics.InitSpec(kind="paired")
  with pytest.raises(ConfigError, match="figure2"):
    _load_config_module().get_config("nope")
  from modgap_jax.tasks import dynamics as dynamics_task

  config = _load_config_module().get_config("reparams")
  config.variants.exp = {"temperature": {"reparm": "exp"}}
  with pytest.raises(ConfigError, match="temperature.reparm"):
    dynamics_task.plan_runs(config)


# --- the entry point --------------------------------------------------------------------


def test_smoke_theorem33_preset_through_run_task(tmp_path):
  from experiments import main as entry

  config = _load_config_module().get_config("theorem33")
  config.batch = 10
  config.time.num = 11
  entry.run_task(config, str(tmp_path))
  with np.load(tmp_path / "trajectory.npz") as npz:
    assert sorted(npz.files) == sorted(dynamics.TRAJECTORY_KEYS)
    assert all(npz[k].shape == (10, 11) and npz[k].dtype == np.float64 for k in npz.files)
    assert np.isfinite(npz["invariant"]).all()  # parallel model, learned τ: I is defined
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["runs"][0]["rows"] == [0, 10]
  assert summary["runs"][0]["checks"]["gap_rise"]["trials"] == 10
  for name in ("gap_tau.png", "sphere_snapshots.png", "gap_rise_hist.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
  assert jnp.zeros(1).dtype == jnp.float32  # float64 stayed scoped to the simulator


def test_bad_preset_exits_2_with_one_line(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.main",
      "--config",
      "configs/dynamics.py:nope",
      "--workdir",
      str(tmp_path / "w"),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and "figure2" in lines[0], proc.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "law,expected", [("exp_beta2", ["e^{-beta^2/c}"]), ("t_log_t", ["1/(t log t)"]), ("power", [])]
)
def test_softplus_verdict_follows_the_numbers(law, expected):
  """The verdict can come out either way (or neither): constructed trajectories of each law."""
  from modgap_jax.dynamics import analysis

  c = 0.5
  t = np.logspace(4, 6, 200)[None]
  beta = np.sqrt(np.log(t))  # any slowly growing β
  gamma = {"exp_beta2": 0.3 * np.exp(-(beta**2) / c), "t_log_t": 5.0 / (t * np.log(t)), "power": t**-3.0}[law]
  rate = analysis.softplus_rate(t, beta, gamma, c, 1e4, 1e6)
  verdict = analysis.softplus_rate_verdict(rate)
  assert verdict["supports"] == expected
  assert f"threshold {analysis.LOG_GAMMA_PLUS_BETA2_SPREAD_TOL:g}" in verdict["statement"]
  assert ("neither" in verdict["statement"]) == (not expected)


def test_a_finite_mxstep_is_refused():
  from modgap_jax.errors import ConfigError

  spec = dynamics.FlowSpec()
  with pytest.raises(ConfigError, match="solver.mxstep=1000 must be inf"):
    dynamics.simulate(spec, {}, {}, np.linspace(0, 1, 3), mxstep=1000)
