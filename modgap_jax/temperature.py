"""The temperature leaf: β(ν) reparameterisations and the optimizer that owns ν.

MATH.md §1 and §4.1. The inverse temperature is β = β(ν), τ = 1/β, with ν one scalar leaf at
``params['temperature']['nu']`` in *every* mode. The mode (learned, fixed, scheduled) lives
entirely in the optax transformation built by :func:`route_temperature`, so the checkpoint
tree and the loss have a single shape and code path, and training code never branches on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from modgap_jax.errors import ConfigError, check_choice, check_number

REPARAMS = ("exp", "softplus", "exp_scaled")
MODES = ("learned", "fixed", "scheduled")
TEMPERATURE_PATH = ("temperature", "nu")


@dataclasses.dataclass(frozen=True)
class Reparam:
  """β(ν), its inverse and its derivative for one reparameterisation (MATH.md §1).

  - ``exp``: β = e^ν (CLIP's; β' = β).
  - ``softplus``: β = log(1 + e^ν) (β' = 1 − e^{−β}).
  - ``exp_scaled``: β = e^{ν/s}, s > 1 (β' = β/s).
  """

  name: str = "exp"
  scale: float = 2.0

  def __post_init__(self):
    check_choice("temperature.reparam", self.name, REPARAMS)
    if self.name == "exp_scaled":
      check_number("temperature.scale", self.scale, 1.0, None, low_inclusive=False)

  def beta(self, nu):
    """β(ν)."""
    if self.name == "exp":
      return jnp.exp(nu)
    if self.name == "softplus":
      return jax.nn.softplus(nu)
    return jnp.exp(nu / self.scale)

  def nu(self, beta):
    """ν(β), the exact inverse of :meth:`beta`, for β > 0."""
    beta = jnp.asarray(beta)
    if self.name == "exp":
      return jnp.log(beta)
    if self.name == "softplus":
      # log(e^β − 1) written so that neither large nor small β overflows or cancels.
      return beta + jnp.log(-jnp.expm1(-beta))
    return self.scale * jnp.log(beta)

  def dbeta_dnu(self, nu):
    """β'(ν)."""
    if self.name == "exp":
      return jnp.exp(nu)
    if self.name == "softplus":
      return jax.nn.sigmoid(nu)
    return jnp.exp(nu / self.scale) / self.scale

  def tau(self, nu):
    """τ = 1/β(ν)."""
    return 1.0 / self.beta(nu)

  def nu_from_tau(self, tau):
    """ν such that τ(ν) = tau; how ν is initialised from τ₀."""
    return self.nu(1.0 / jnp.asarray(tau))


SCHEDULE_KINDS = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class TauSchedule:
  """τ as a function of time t: from ``tau_start`` to ``tau_end`` over [0, ``duration``], then constant.

  With f = min(t/T, 1) for T = ``duration``:

  - ``linear``: τ(t) = τ_s + (τ_e − τ_s) f (``optax.linear_schedule``);
  - ``cosine``: τ(t) = τ_s + (τ_e − τ_s)(1 − cos πf)/2 (``optax.cosine_decay_schedule`` with
    α = τ_e/τ_s).

  The trainer calls it with the step count (T = the run's steps, MATH.md §4.1's TS); the flow
  with continuous time (MATH.md §3.4). Frozen and hashable, so a spec holding it can be a jit
  static argument.
  """

  kind: str = "linear"
  tau_start: float = 0.01
  tau_end: float = 0.05
  duration: float = 1.0

  def __post_init__(self):
    check_choice("temperature.schedule.kind", self.kind, SCHEDULE_KINDS)
    check_number("temperature.schedule.tau_start", self.tau_start, 0.0, None, low_inclusive=False)
    check_number("temperature.schedule.tau_end", self.tau_end, 0.0, None, low_inclusive=False)
    check_number("temperature.schedule.duration", self.duration, 0.0, None, low_inclusive=False)

  def __call__(self, t):
    """τ(t), for an integer step or a continuous time t ≥ 0."""
    if self.kind == "linear":
      return optax.linear_schedule(self.tau_start, self.tau_end, self.duration)(t)
    return optax.cosine_decay_schedule(self.tau_start, self.duration, alpha=self.tau_end / self.tau_start)(t)


@dataclasses.dataclass(frozen=True)
class TemperatureSpec:
  """Everything that decides how ν moves.

  Attributes:
    reparam: the β(ν) map.
    mode: ``learned`` (Adam on ν, learning rate × ``lr_multiplier``; 0.1 is the paper's
      SLRT), ``fixed`` (ν never changes) or ``scheduled`` (τ follows ``tau_schedule``).
    tau_init: τ₀ for ``learned`` and ``fixed``; ``scheduled`` starts at ``tau_schedule(0)``.
    lr_multiplier: the rate multiplier c on ν in ``learned`` mode.
    beta_cap: in ``learned`` mode, β is projected onto (0, beta_cap] after every update, as
      CLIP clamps its logit scale at log 100. None disables the cap.
    tau_schedule: a :class:`TauSchedule`, or any optax schedule step ↦ τ, for ``scheduled``
      mode. After the k-th update the leaf holds ν(τ_schedule(k)).

  The gradient flow (:class:`modgap_jax.dynamics.FlowSpec`) reads the same fields in
  continuous time: ν̇ = −c ∂L/∂ν with c = ``lr_multiplier``, projected onto β ≤ ``beta_cap``;
  ν fixed; or τ(t) = ``tau_schedule(t)``.
  """

  reparam: Reparam = Reparam()
  mode: str = "learned"
  tau_init: float = 0.07
  lr_multiplier: float = 1.0
  beta_cap: float | None = 100.0
  tau_schedule: Callable[[Any], Any] | None = None

  def __post_init__(self):
    check_choice("temperature.mode", self.mode, MODES)
    check_number("temperature.tau_init", self.tau_init, 0.0, None, low_inclusive=False)
    check_number("temperature.lr_multiplier", self.lr_multiplier, 0.0, None)
    if self.beta_cap is not None:
      check_number("temperature.beta_cap", self.beta_cap, 0.0, None, low_inclusive=False)
      if self.mode == "learned" and 1.0 / self.tau_init > self.beta_cap:
        raise ConfigError(
          f"temperature.tau_init={self.tau_init} gives β above temperature.beta_cap="
          f"{self.beta_cap}; choose tau_init >= {1.0 / self.beta_cap}"
        )
    if self.mode == "scheduled" and self.tau_schedule is None:
      raise ConfigError("temperature.schedule is required when temperature.mode='scheduled'")

  @property
  def nu_init(self) -> float:
    """The initial value of the leaf ν."""
    tau0 = self.tau_schedule(0) if self.mode == "scheduled" else self.tau_init
    return float(self.reparam.nu_from_tau(tau0))


def beta_from_params(params: Any, reparam: Reparam) -> jax.Array:
  """β read from the leaf ``params['temperature']['nu']``."""
  return reparam.beta(params["temperature"]["nu"])


# --- optax transformations for the leaf -------------------------------------------------


class ScheduleState(NamedTuple):
  count: jax.Array


def follow_tau_schedule(tau_schedule: Callable[[Any], Any], reparam: Reparam) -> optax.GradientTransformation:
  """Ignores the gradient; moves ν so that after update k it equals ν(τ_schedule(k))."""

  def init_fn(params):
    del params
    return ScheduleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params):
    if params is None:
      raise ValueError("follow_tau_schedule needs params in update()")
    count = state.count + 1
    target = lambda p: reparam.nu_from_tau(jnp.asarray(tau_schedule(count), p.dtype)).astype(p.dtype)
    new_updates = jax.tree.map(lambda u, p: target(p) - p, updates, params)
    return new_updates, ScheduleState(count=count)

  return optax.GradientTransformation(init_fn, update_fn)


def project_beta_cap(beta_cap: float, reparam: Reparam) -> optax.GradientTransformation:
  """Projects ν onto ν ≤ ν(beta_cap) after the update: u ← min(ν + u, ν_cap) − ν."""

  def update_fn(updates, state, params):
    if params is None:
      raise ValueError("project_beta_cap needs params in update()")

    def project(u, p):
      nu_cap = reparam.nu(jnp.asarray(beta_cap, p.dtype))
      return jnp.minimum(p + u, nu_cap) - p

    return jax.tree.map(project, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def temperature_transform(
  spec: TemperatureSpec, learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
  """The transformation for the leaf ν alone. No weight decay is ever applied to ν."""
  if spec.mode == "fixed":
    return optax.set_to_zero()
  if spec.mode == "scheduled":
    return follow_tau_schedule(spec.tau_schedule, spec.reparam)
  if callable(learning_rate):
    scaled = lambda count: spec.lr_multiplier * learning_rate(count)
  else:
    scaled = spec.lr_multiplier * learning_rate
  parts = [optax.adam(scaled, b1=b1, b2=b2, eps=eps)]
  if spec.beta_cap is not None:
    parts.append(project_beta_cap(spec.beta_cap, spec.reparam))
  return optax.chain(*parts)


def temperature_labels(params: Any) -> Any:
  """Labels every leaf 'temperature' or 'rest' for ``optax.multi_transform``."""

  def label(path, _):
    keys = tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)
    return "temperature" if keys[-2:] == TEMPERATURE_PATH else "rest"

  return jax.tree_util.tree_map_with_path(label, params)


def route_temperature(
  rest: optax.GradientTransformation,
  spec: TemperatureSpec,
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
) -> optax.GradientTransformation:
  """One whole-tree transformation: ``rest`` for every leaf but ν, the mode's handling for ν.

  Args:
    rest: the optimizer for all other parameters (e.g. AdamW with a weight-decay mask).
    spec: how ν moves.
    learning_rate: the base learning rate or schedule; ν's is this × ``spec.lr_multiplier``.
    b1, b2, eps: Adam moments for ν, normally the same as ``rest``'s.
  """
  return optax.multi_transform(
    {"temperature": temperature_transform(spec, learning_rate, b1=b1, b2=b2, eps=eps), "rest": rest}, temperature_labels
  )


# --- configs --------------------------------------------------------------------------


def tau_schedule_from_config(schedule_cfg: Any, duration: float) -> TauSchedule:
  """A :class:`TauSchedule` from ``{kind, tau_start, tau_end}``, over ``duration``.

  MATH.md §4.1's S0–S3 are ``linear`` from 0.01 to {0.02, 0.03, 0.04, 0.05}, stepped per
  training step (``duration`` = the run's steps).
  """
  return TauSchedule(
    schedule_cfg.get("kind", "linear"), float(schedule_cfg.tau_start), float(schedule_cfg.tau_end), duration
  )


def spec_from_config(temperature_cfg: Any, schedule_duration: float) -> TemperatureSpec:
  """Builds a validated :class:`TemperatureSpec` from a ``config.temperature`` ConfigDict.

  ``schedule_duration`` is the τ schedule's T: the run's steps for the trainer, flow time for
  the simulator. A ``beta_cap`` of None or 0 means no cap.
  """
  cfg = temperature_cfg
  mode = cfg.get("mode", "learned")
  schedule = None  # TemperatureSpec refuses mode='scheduled' without one
  if mode == "scheduled" and cfg.get("schedule", None) is not None:
    schedule = tau_schedule_from_config(cfg.schedule, schedule_duration)
  cap = cfg.get("beta_cap", None)
  return TemperatureSpec(
    reparam=Reparam(cfg.get("reparam", "exp"), float(cfg.get("scale", 2.0))),
    mode=mode,
    tau_init=float(cfg.get("tau_init", 0.07)),
    lr_multiplier=float(cfg.get("lr_multiplier", 1.0)),
    beta_cap=None if cap in (None, 0) else float(cap),
    tau_schedule=schedule,
  )
