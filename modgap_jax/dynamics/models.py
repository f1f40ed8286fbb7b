"""The gradient-flow models of MATH.md §3: their states, features, loss and velocity field.

Three models, each with its state as a pytree of float64 arrays:

- ``reduced`` (MATH.md §3.1–3.2): state ``{nu, gamma}``. The in-subspace directions u_i, v_i
  are frozen (they ride along as ``data``), so S = U Vᵀ is fixed and L = ℓ(κ; S) with
  κ = β(ν)(1−γ²).
- ``parallel`` (MATH.md §3.1–3.2): state ``{nu, gamma, w_x, w_y}`` with w of shape [n, d−1] and
  u = w/‖w‖. Features are h^x = (√(1−γ²) u^x, +γ), h^y = (√(1−γ²) u^y, −γ); the last
  coordinate is the axis e.
- ``free``: state ``{nu, f_x, f_y}`` with f of shape [n, d], features h = f/‖f‖. No parallel
  constraint, so γ is undefined and Δ is measured directly.

The velocity is −∇L of the training loss ``losses.clip_loss`` (by autodiff), with ν's
component multiplied by the rate c and shaped by the temperature mode. The reduced model
also has MATH.md §3.2's closed form, so the two can be checked against each other.

The γ-parameterisation is singular at |γ| = 1 (both clouds collapse onto ±e). A mismatched
flow with a large β can drive γ there before its pairs re-match (γ̇ = 2βγℓ' with ℓ' > 0);
from then on √(1−γ²) is NaN and so is the rest of that trajectory. ``theorem33`` therefore
looks only at early times, and ``figure2`` uses the unconstrained free model.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modgap_jax import losses, numerics
from modgap_jax.errors import ConfigError, check_choice, check_number, check_range
from modgap_jax.temperature import TemperatureSpec

MODELS = ("reduced", "parallel", "free")
INITS = ("matched", "mismatched", "uniform")
REDUCED_RHS = ("closed_form", "autodiff")


@dataclasses.dataclass(frozen=True)
class FlowSpec:
  """Everything static about one flow; hashable, so it can be a jit static argument.

  Attributes:
    model: ``reduced``, ``parallel`` or ``free``.
    temperature: the trainer's temperature spec, read in continuous time (MATH.md §3.2):
      - ``reparam``: the β(ν) map (MATH.md §1);
      - ``mode='learned'``: ν̇ = −c ∂L/∂ν with c = ``lr_multiplier`` (0.1 is the paper's
        SLRT); with a ``beta_cap``, projected onto β ≤ cap: ν̇ = 0 whenever β ≥ cap and the
        free ν̇ > 0 (MATH.md §3.4, CLIP's clamp at 100 in continuous time);
      - ``mode='fixed'``: ν̇ = 0;
      - ``mode='scheduled'``: τ(t) = ``tau_schedule(t)`` (a :class:`temperature.TauSchedule`
        over flow time); the state's ν is ignored and ν̇ = 0 there, and the recorded ν is
        ν(1/τ(t));
      - ``tau_init``: τ₀, so ν₀ = ν(1/τ₀) (``scheduled``: τ(0)).
      The default is uncapped, the theorems' setting.
    reduced_rhs: ``closed_form`` (MATH.md §3.2's ℓ'(κ)) or ``autodiff`` (−∇ of clip_loss on the
      parallel features); reduced model only.
  """

  model: str = "reduced"
  temperature: TemperatureSpec = TemperatureSpec(beta_cap=None)
  reduced_rhs: str = "closed_form"

  def __post_init__(self):
    check_choice("model", self.model, MODELS)
    check_choice("reduced_rhs", self.reduced_rhs, REDUCED_RHS)
    if self.learns_temperature and self.temperature.lr_multiplier == 0:
      # Lemma 3.1's G(β) = ∫ 2b/(c β′²) db divides by c; a frozen ν is mode 'fixed'.
      raise ConfigError("temperature.lr_multiplier=0 freezes a learned flow's ν; use temperature.mode='fixed'")

  @property
  def reparam(self):
    """The β(ν) map, ``temperature.reparam``."""
    return self.temperature.reparam

  @property
  def rate(self) -> float:
    """The rate multiplier c on ν (``temperature.lr_multiplier``)."""
    return self.temperature.lr_multiplier

  @property
  def has_gamma(self) -> bool:
    """Whether γ is defined (parallel structure)."""
    return self.model != "free"

  @property
  def learns_temperature(self) -> bool:
    """Whether ν follows the gradient (so that Lemma 3.1 applies, up to a cap)."""
    return self.temperature.mode == "learned"

  @property
  def capped(self) -> bool:
    """Whether a learned ν is projected onto β ≤ ``temperature.beta_cap``."""
    return self.learns_temperature and self.temperature.beta_cap is not None


# --- temperature ----------------------------------------------------------------------


def beta_at(spec: FlowSpec, t: jax.Array, nu: jax.Array) -> jax.Array:
  """β at time t: β(ν) from the state, or 1/τ(t) in ``scheduled`` mode."""
  if spec.temperature.mode == "scheduled":
    return 1.0 / spec.temperature.tau_schedule(t)
  return spec.reparam.beta(nu)


def nu_at(spec: FlowSpec, t: jax.Array, nu: jax.Array) -> jax.Array:
  """The ν that gives :func:`beta_at`; the state's own ν except in ``scheduled`` mode."""
  if spec.temperature.mode == "scheduled":
    return spec.reparam.nu(beta_at(spec, t, nu))
  return nu


def nu_velocity(spec: FlowSpec, nu: jax.Array, dloss_dnu: jax.Array) -> jax.Array:
  """ν̇ from ∂L/∂ν for each mode: −c ∂L/∂ν (projected onto β ≤ cap), or 0."""
  if not spec.learns_temperature:
    return jnp.zeros_like(nu)
  free = -spec.rate * dloss_dnu
  if spec.capped:
    # Projected flow: at the cap only the inward (decreasing-β) motion survives.
    at_cap = spec.reparam.beta(nu) >= spec.temperature.beta_cap
    return jnp.where(at_cap & (free > 0), jnp.zeros_like(free), free)
  return free


# --- features -------------------------------------------------------------------------


normalize = numerics.l2_normalize  # float64 in, float64 out


def parallel_features(u: jax.Array, v: jax.Array, gamma: jax.Array) -> tuple[jax.Array, jax.Array]:
  """MATH.md §3.1: h^x_i = (√(1−γ²) u_i, +γ), h^y_i = (√(1−γ²) v_i, −γ), for unit u_i, v_i."""
  radius = jnp.sqrt(1.0 - gamma**2)
  ones = jnp.ones(u.shape[:-1] + (1,), u.dtype)
  image = jnp.concatenate([radius * u, gamma * ones], axis=-1)
  text = jnp.concatenate([radius * v, -gamma * ones], axis=-1)
  return image, text


def features(spec: FlowSpec, state: dict, data: dict) -> tuple[jax.Array, jax.Array]:
  """The unit features (H_X, H_Y), each [n, d], of one state."""
  if spec.model == "reduced":
    return parallel_features(data["u"], data["v"], state["gamma"])
  if spec.model == "parallel":
    return parallel_features(normalize(state["w_x"]), normalize(state["w_y"]), state["gamma"])
  return normalize(state["f_x"]), normalize(state["f_y"])


def loss(spec: FlowSpec, state: dict, t: jax.Array, data: dict) -> jax.Array:
  """L = losses.clip_loss(H_X, H_Y, β(t, ν)): the loss training minimises (MATH.md §3.2).

  clip_loss accumulates in the inputs' precision when that is wider than float32, so under
  ``jax.enable_x64`` this is a float64 loss and −∇L a float64 flow.
  """
  image, text = features(spec, state, data)
  return losses.clip_loss(image, text, beta_at(spec, t, state["nu"]))


def gap(image: jax.Array, text: jax.Array) -> jax.Array:
  """Δ = ‖mean_i h^x_i − mean_i h^y_i‖₂ (MATH.md §2) for paired rows.

  ``metrics.modality_gap``'s number, written as the mean of the pair differences so that a
  vanishing gap (matched pairs, γ → 0; flows reach Δ ~ 1e-150) is not lost under the
  rounding of two separate centroids (a 1e-17 floor) or the underflow of its square.
  Its gradient is not needed (Δ is only recorded) except in :func:`gap_velocity`.
  """
  diff = jnp.mean(image - text, axis=0)
  # Scaled by the largest entry so that a gap of 1e-200 does not square to underflow.
  scale = jnp.max(jnp.abs(diff))
  safe = jnp.where(scale > 0, scale, 1.0)
  return scale * jnp.sqrt(jnp.sum((diff / safe) ** 2))


def matched_fraction(image: jax.Array, text: jax.Array) -> jax.Array:
  """The share of i whose nearest text (largest ⟨h^x_i, h^y_j⟩) is its own, j = i."""
  nearest = jnp.argmax(image @ text.T, axis=1)
  return jnp.mean((nearest == jnp.arange(image.shape[0])).astype(image.dtype))


# --- velocity fields ------------------------------------------------------------------


def reduced_dloss_dkappa(similarity: jax.Array, kappa: jax.Array) -> jax.Array:
  """MATH.md §3.2: ℓ'(κ) = (1/2n) Σ_i [(Σ_j P_ij S_ij − S_ii) + (Σ_j Q_ij S_ji − S_ii)].

  P is the row softmax of κS and Q the column softmax, so ℓ' < 0 when every true pair beats
  its softmax-weighted competitors. Evaluated as Σ_j P_ij (S_ij − S_ii), which is the same
  sum (Σ_j P_ij = 1) without the cancellation that would cap its relative accuracy at
  1e-16/|ℓ'| once the loss saturates (late times, ℓ' ~ e^{−ακ}).
  """
  n = similarity.shape[0]
  diag = jnp.diagonal(similarity)
  rows = jax.nn.softmax(kappa * similarity, axis=1)
  cols = jax.nn.softmax(kappa * similarity, axis=0)
  image_to_text = jnp.sum(rows * (similarity - diag[:, None]), axis=1)
  text_to_image = jnp.sum(cols * (similarity - diag[None, :]), axis=0)
  return (image_to_text.sum() + text_to_image.sum()) / (2 * n)


def reduced_velocity_closed_form(spec: FlowSpec, state: dict, t: jax.Array, data: dict) -> dict:
  """MATH.md §3.2 in closed form: ν̇ = −c ℓ'(κ)(1−γ²)β'(ν), γ̇ = 2βγℓ'(κ), κ = β(1−γ²)."""
  nu, gamma = state["nu"], state["gamma"]
  beta = beta_at(spec, t, nu)
  dl = reduced_dloss_dkappa(data["u"] @ data["v"].T, beta * (1.0 - gamma**2))
  dloss_dnu = dl * (1.0 - gamma**2) * spec.reparam.dbeta_dnu(nu)
  return {"nu": nu_velocity(spec, nu, dloss_dnu), "gamma": 2.0 * beta * gamma * dl}


def velocity(spec: FlowSpec, state: dict, t: jax.Array, data: dict) -> dict:
  """The flow's right-hand side: −∇L by autodiff, ν's part scaled by c and shaped by mode.

  For the reduced model with ``reduced_rhs='closed_form'`` this is MATH.md §3.2's formula;
  with ``'autodiff'`` it is −∂/∂(ν, γ) of clip_loss on the parallel features.
  """
  if spec.model == "reduced" and spec.reduced_rhs == "closed_form":
    return reduced_velocity_closed_form(spec, state, t, data)
  grads = jax.grad(loss, argnums=1)(spec, state, t, data)
  out = jax.tree.map(jnp.negative, grads)
  out["nu"] = nu_velocity(spec, state["nu"], grads["nu"])
  return out


def gap_velocity(spec: FlowSpec, state: dict, t: jax.Array, data: dict) -> jax.Array:
  """dΔ/dt along the flow: ⟨δ, δ̇⟩/Δ with δ = mean_i (h^x_i − h^y_i), δ̇ by forward mode.

  At t = 0 this is the quantity of Theorem 3.3 (MATH.md §3.5). At Δ = 0 it is the one-sided
  rate ‖δ̇‖.
  """
  mean_diff = lambda s: jnp.mean(jnp.subtract(*features(spec, s, data)), axis=0)
  diff, rate = jax.jvp(mean_diff, (state,), (velocity(spec, state, t, data),))
  scale = jnp.max(jnp.abs(diff))
  unit = diff / jnp.where(scale > 0, scale, 1.0)  # δ/scale: no underflow for tiny gaps
  norm = jnp.sqrt(jnp.sum(unit**2))
  return jnp.where(scale > 0, jnp.dot(unit, rate) / jnp.where(norm > 0, norm, 1.0), jnp.linalg.norm(rate))


# --- initial states -------------------------------------------------------------------


def _sphere(key: jax.Array, n: int, dim: int) -> jax.Array:
  """n points uniform on S^{dim−1} ⊂ R^dim."""
  return normalize(jax.random.normal(key, (n, dim), jnp.float64))


def _partners(key: jax.Array, points: jax.Array, kind: str) -> jax.Array:
  """The text directions for image directions ``points``: the same, a deranged copy, or new.

  ``mismatched`` applies a random n-cycle (a permutation without fixed points), so no row
  keeps its own partner.
  """
  if kind == "matched":
    return points
  if kind == "mismatched":
    n = points.shape[0]
    order = jax.random.permutation(key, n)
    # Each point of the random order hands its slot to the next one: an n-cycle.
    target = jnp.zeros_like(order).at[order].set(jnp.roll(order, -1))
    return points[target]
  return _sphere(key, points.shape[0], points.shape[1])


def _offset_gap(points: jax.Array, partners: jax.Array, shift: jax.Array) -> jax.Array:
  """Δ after shifting the clouds by ±shift along the last axis and renormalising."""
  axis = jnp.zeros(points.shape[-1], points.dtype).at[-1].set(1.0)
  return gap(normalize(points + shift * axis), normalize(partners - shift * axis))


def offset_for_gap(points: jax.Array, partners: jax.Array, target_gap: float, iterations: int = 100) -> jax.Array:
  """The shift a ≥ 0 with Δ(normalise(p + a e), normalise(q − a e)) = target_gap.

  Δ runs from Δ(0) up to 2 as a → ∞. Bisection works on s = a/(1+a) ∈ [0, 1), so one
  bracket covers every a; 100 halvings pin s to float64 resolution. A target below Δ(0)
  gives a = 0 (the clouds' own gap).
  """

  def gap_at(s):
    return _offset_gap(points, partners, s / (1.0 - s))

  def halve(_, bracket):
    low, high = bracket
    mid = 0.5 * (low + high)
    below = gap_at(mid) < target_gap
    return jnp.where(below, mid, low), jnp.where(below, high, mid)

  low, high = jax.lax.fori_loop(0, iterations, halve, (jnp.float64(0.0), jnp.float64(1.0 - 1e-12)))
  s = 0.5 * (low + high)
  return jnp.where(gap_at(0.0) >= target_gap, 0.0, s / (1.0 - s))


@dataclasses.dataclass(frozen=True)
class InitSpec:
  """How to draw one initial state (MATH.md §3.1, §3.5).

  Attributes:
    n: pairs in the batch.
    d: ambient dimension of the features (the sphere is S^{d−1}).
    kind: ``matched`` (v = u), ``mismatched`` (v = u under a random n-cycle) or ``uniform``
      (u and v independent and uniform on the sphere).
    gamma0: the initial γ (reduced, parallel).
    gap0: the initial Δ (free). The clouds p_i, q_i (drawn as ``kind`` says on S^{d−1}) are
      pushed apart along the last axis e: h^x = (p + a e)/‖·‖, h^y = (q − a e)/‖·‖, with a ≥ 0
      found by bisection so that Δ = gap0. Where gap0 < Δ at a = 0, a = 0; the realised gap is
      always the trajectory's first ``gap``.
  """

  n: int = 8
  d: int = 8
  kind: str = "matched"
  gamma0: float = 0.3
  gap0: float = 0.5

  def __post_init__(self):
    check_number("n", self.n, 2, None, integer=True)
    check_number("d", self.d, 2, None, integer=True)
    check_choice("init.kind", self.kind, INITS)
    check_range("init.gamma0", self.gamma0, -1.0, 1.0, low_inclusive=False, high_inclusive=False)
    check_range("init.gap0", self.gap0, 0.0, 2.0, high_inclusive=False)


def initial_state(spec: FlowSpec, init: InitSpec, key: jax.Array) -> tuple[dict, dict]:
  """One initial (state, data) pair of float64 arrays. Call under ``jax.enable_x64``.

  ``data`` holds what the flow keeps fixed: the reduced model's unit u, v ([n, d−1]);
  it is empty for the other models.
  """
  if not jax.config.jax_enable_x64:
    raise RuntimeError("initial_state must run under jax.enable_x64(True)")
  key_points, key_partners = jax.random.split(key)
  nu0 = jnp.float64(spec.temperature.nu_init)  # ν(1/τ₀), or ν(1/τ(0)) when scheduled
  gamma0 = jnp.float64(init.gamma0)
  if spec.model in ("reduced", "parallel"):
    u = _sphere(key_points, init.n, init.d - 1)
    v = _partners(key_partners, u, init.kind)
    if spec.model == "reduced":
      return {"nu": nu0, "gamma": gamma0}, {"u": u, "v": v}
    return {"nu": nu0, "gamma": gamma0, "w_x": u, "w_y": v}, {}
  p = _sphere(key_points, init.n, init.d)
  q = _partners(key_partners, p, init.kind)
  shift = offset_for_gap(p, q, init.gap0)
  axis = jnp.zeros(init.d, jnp.float64).at[-1].set(1.0)
  return {"nu": nu0, "f_x": normalize(p + shift * axis), "f_y": normalize(q - shift * axis)}, {}


def initial_states(spec: FlowSpec, init: InitSpec, key: jax.Array, batch: int) -> tuple[dict, dict]:
  """A batch of initial (state, data), leading axis ``batch``, from independent keys.

  Drawn in float64 (under ``jax.enable_x64``, scoped to this call) and returned as NumPy
  float64 arrays, ready for :func:`modgap_jax.dynamics.simulate`.
  """
  with jax.enable_x64(True):
    keys = jax.random.split(key, batch)
    states, data = jax.vmap(lambda k: initial_state(spec, init, k))(keys)
    return jax.device_get((states, data))
