"""Integrating the flows with ``jax.experimental.ode.odeint``, in float64, vmapped over inits.

MATH.md §3.6: float32 is not enough for flows that run to t = 1e6 (the late gradients are
exponentially small), so everything here runs under ``jax.enable_x64(True)``. That is a
context manager, scoped to the call: the rest of the library stays float32.

Every trajectory records, at each output time, the quantities of ``TRAJECTORY_KEYS``, all
float64 arrays of shape [B, T] (``t`` is broadcast to [B, T] as well, so every key has the
same shape). NaN marks a quantity that is undefined for that model or mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import ode

from modgap_jax import losses
from modgap_jax.dynamics import models
from modgap_jax.errors import ConfigError, check_choice, check_number, check_range
from modgap_jax.temperature import Reparam

TRAJECTORY_KEYS = ("t", "gap", "gamma", "nu", "beta", "tau", "loss", "matched_frac", "invariant")
GRIDS = ("log", "linear")
BETA_REF = 1.0
# Below this |γ| the flow no longer resolves γ in float64 (it heads for underflow at 1e-308,
# and odeint's absolute tolerance takes over), so log γ, hence I, is reported as NaN.
GAMMA_FLOOR = 1e-200


# --- Lemma 3.1 --------------------------------------------------------------------------


def _softplus_antiderivative(b: jax.Array) -> jax.Array:
  """F(b) with F'(b) = b / (1 − e^{−b})², in closed form through the dilogarithm Li₂.

  Expanding 1/(1−q)² = Σ_k k q^{k−1} with q = e^{−b} and integrating term by term gives

      F(b) = b²/2 − b/(e^b − 1) + (1 + b) log(1 − e^{−b}) − Li₂(e^{−b}),

  with Li₂(x) = spence(1 − x) (SciPy's convention). Every term is evaluated without
  cancellation (expm1), so F is accurate to float64 rounding for all b > 0; the tests check
  it against ``scipy.integrate.quad``.
  """
  one_minus_q = -jnp.expm1(-b)
  return 0.5 * b**2 - b / jnp.expm1(b) + (1.0 + b) * jnp.log(one_minus_q) - jax.scipy.special.spence(one_minus_q)


def temperature_integral(reparam: Reparam, rate: float, beta: jax.Array) -> jax.Array:
  """G(β) = ∫_{β_ref}^{β} 2b / (c β'(ν(b))²) db with β_ref = 1 (MATH.md §3.3).

  - ``exp`` (β' = β): G = (2/c) log β.
  - ``exp_scaled`` (β' = β/s): G = (2s²/c) log β.
  - ``softplus`` (β' = 1 − e^{−β}): G = (2/c) [F(β) − F(1)], F from
    :func:`_softplus_antiderivative` (the quadrature done exactly; no elementary form).

  The reference β_ref = 1 makes G(1) = 0 for every reparameterisation, matching the log
  forms; any other reference only shifts I by a constant.
  """
  beta = jnp.asarray(beta)
  if reparam.name == "exp":
    return 2.0 / rate * jnp.log(beta)
  if reparam.name == "exp_scaled":
    return 2.0 * reparam.scale**2 / rate * jnp.log(beta)
  return 2.0 / rate * (_softplus_antiderivative(beta) - _softplus_antiderivative(jnp.asarray(BETA_REF, beta.dtype)))


def invariant(reparam: Reparam, rate: float, gamma: jax.Array, beta: jax.Array) -> jax.Array:
  """Lemma 3.1 (MATH.md §3.3): I = log γ − γ²/2 + ∫_{β_ref}^{β} 2b / (c β'(ν(b))²) db.

  Conserved along the learned flow of the parallel and reduced models (dγ/dβ =
  −2βγ / (c β'² (1−γ²))). log |γ| is used, so the sign of γ does not matter; I = −∞ at γ = 0.
  """
  return jnp.log(jnp.abs(gamma)) - 0.5 * gamma**2 + temperature_integral(reparam, rate, beta)


# --- records --------------------------------------------------------------------------


def record(spec: models.FlowSpec, state: dict, t: jax.Array, data: dict) -> dict:
  """The per-time quantities of one state (all scalars; ``t`` excluded).

  ``gamma`` is NaN for the free model. ``invariant`` is I of Lemma 3.1 where ν follows the
  gradient (``learned``; with a β cap it is conserved until β reaches the cap, and then
  falls); it is NaN for the free model and for ``fixed`` and ``scheduled`` τ, where ν
  does not follow the gradient (β is imposed, dβ/dt ≠ c-scaled gradient, so no conserved
  quantity of that form exists; γ then simply decays, exponentially for fixed τ). It is
  also NaN where |γ| < ``GAMMA_FLOOR``, out of float64's reach.
  """
  image, text = models.features(spec, state, data)
  nu = models.nu_at(spec, t, state["nu"])
  beta = models.beta_at(spec, t, state["nu"])
  nan = jnp.full((), jnp.nan, beta.dtype)
  gamma = state["gamma"] if spec.has_gamma else nan
  if spec.has_gamma and spec.learns_temperature:
    inv = invariant(spec.reparam, spec.rate, gamma, beta)
    inv = jnp.where(jnp.abs(gamma) >= GAMMA_FLOOR, inv, nan)
  else:
    inv = nan
  return {
    "gap": models.gap(image, text),
    "gamma": gamma,
    "nu": nu,
    "beta": beta,
    "tau": 1.0 / beta,
    "loss": losses.clip_loss(image, text, beta),
    "matched_frac": models.matched_fraction(image, text).astype(beta.dtype),
    "invariant": inv,
  }


# --- integration ----------------------------------------------------------------------


def time_grid(kind: str, t_max: float, num: int, t_min: float = 1e-3) -> np.ndarray:
  """Output times, starting at t = 0.

  ``linear``: num points evenly over [0, t_max]. ``log``: 0, then num − 1 points
  log-spaced over [t_min, t_max] (for flows to t ≥ 1e6 whose interesting times span decades).
  """
  check_choice("time.grid", kind, GRIDS)
  check_number("time.t_max", t_max, 0.0, None, low_inclusive=False)
  check_number("time.num", num, 3, None, integer=True)
  if kind == "linear":
    return np.linspace(0.0, t_max, num)
  check_range("time.t_min", t_min, 0.0, t_max, low_inclusive=False, high_inclusive=False)
  return np.concatenate([[0.0], np.geomspace(t_min, t_max, num - 1)])


@functools.partial(jax.jit, static_argnames=("spec", "rtol", "atol", "mxstep"))
def _integrate(spec, state0, data, t, rtol, atol, mxstep):
  """odeint of one batch: vmap over the leading axis of ``state0`` and ``data``."""

  def field(state, time, data_one):
    return models.velocity(spec, state, time, data_one)

  def one(state_one, data_one):
    states = ode.odeint(field, state_one, t, data_one, rtol=rtol, atol=atol, mxstep=mxstep)
    records = jax.vmap(lambda s, time: record(spec, s, time, data_one))(states, t)
    return states, records

  return jax.vmap(one)(state0, data)


@functools.partial(jax.jit, static_argnames=("spec",))
def _gap_velocities(spec, state, data):
  return jax.vmap(lambda s, d: models.gap_velocity(spec, s, jnp.zeros((), jnp.float64), d))(state, data)


def initial_gap_velocity(spec: models.FlowSpec, state0: dict, data: dict) -> np.ndarray:
  """dΔ/dt at t = 0 for each of a batch of initial states (Theorem 3.3), float64 [B]."""
  with jax.enable_x64(True):
    state0, data = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (state0, data))
    return np.asarray(jax.device_get(_gap_velocities(spec, state0, data)), np.float64)


def simulate(
  spec: models.FlowSpec,
  state0: dict,
  data: dict,
  t: np.ndarray,
  *,
  rtol: float = 1e-10,
  atol: float = 1e-12,
  mxstep: float = np.inf,
) -> tuple[dict, dict]:
  """Integrates a batch of flows in one jitted, vmapped odeint call, in float64.

  Args:
    spec: the flow.
    state0, data: a batch of initial states and fixed data, leading axis B (see
      :func:`models.initial_states`).
    t: output times [T], strictly increasing, t[0] the initial time.
    rtol, atol: odeint's local error tolerances. odeint controls the RMS over all state
      components of err / (atol + rtol |y|), so with γ ≪ atol the relative accuracy of γ is
      lost: keep atol well below the smallest γ of interest.
    mxstep: must be inf. jax's odeint, stopped by a finite ``mxstep`` inside an output
      interval, returns values extrapolated from where it stopped and says nothing, so a
      finite value is refused rather than risk silently wrong trajectories.

  Returns:
    (records, states): ``records`` maps each of ``TRAJECTORY_KEYS`` to a float64 NumPy array
    [B, T]; ``states`` is the state pytree with leaves [B, T, ...].
  """
  if not np.isinf(mxstep):
    raise ConfigError(
      f"solver.mxstep={mxstep!r} must be inf: odeint would silently extrapolate an output "
      "interval it cannot finish in mxstep steps"
    )
  with jax.enable_x64(True):
    state0, data = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (state0, data))
    times = jnp.asarray(t, jnp.float64)
    states, records = _integrate(spec, state0, data, times, float(rtol), float(atol), float(mxstep))
    states, records = jax.device_get((states, records))
  batch = np.shape(records["gap"])[0]
  records = {k: np.asarray(v, np.float64) for k, v in records.items()}
  records["t"] = np.broadcast_to(np.asarray(t, np.float64), (batch, len(t))).copy()
  return {k: records[k] for k in TRAJECTORY_KEYS}, states
