"""The checks a simulated flow is held to, chosen by its own :class:`FlowSpec` (temperature
mode, cap and reparameterisation), never by a preset's run names (MATH.md §3.3–3.5).

:func:`check_run` gives one run's verification numbers; :func:`findings` compares runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ml_collections import ConfigDict

from modgap_jax.dynamics import analysis
from modgap_jax.dynamics.integrate import GAMMA_FLOOR
from modgap_jax.dynamics.models import FlowSpec


def _window_ok(t: np.ndarray, window) -> bool:
  lo, hi = window
  return int(np.sum((t >= lo) & (t <= hi))) >= 3


def _story(records: dict) -> dict:
  """Row 0's gap/τ story (Figure 2): peaks, when every pair is matched, where it ends."""
  t, gap, tau, matched = (records[k][0] for k in ("t", "gap", "tau", "matched_frac"))
  done = np.flatnonzero(matched >= 1.0)
  # The first time after which every pair stays matched.
  stays = [k for k in done if np.all(matched[k:] >= 1.0)]
  return {
    "gap_initial": float(gap[0]),
    "gap_peak": float(np.nanmax(gap)),
    "t_gap_peak": float(t[np.nanargmax(gap)]),
    "tau_initial": float(tau[0]),
    "tau_peak": float(np.nanmax(tau)),
    "t_tau_peak": float(t[np.nanargmax(tau)]),
    "t_all_matched": float(t[stays[0]]) if stays else None,
    "gap_final": float(gap[-1]),
    "tau_final": float(tau[-1]),
  }


def check_run(config: ConfigDict, spec: FlowSpec, records: dict, gap_rate0: np.ndarray) -> dict:
  """The verification numbers that apply to this run's model and mode (MATH.md §3.3–3.5)."""
  t = records["t"][0]
  cfg = config.analysis
  out = {
    "initial_gap_mean": float(np.mean(records["gap"][:, 0])),
    "final_gap_mean": float(np.nanmean(records["gap"][:, -1])),
    "max_gap_mean": float(np.mean(np.nanmax(records["gap"], axis=1))),
    "final_tau_mean": float(np.nanmean(records["tau"][:, -1])),
    "final_matched_frac_mean": float(np.nanmean(records["matched_frac"][:, -1])),
    "trajectories_with_nan": int(np.sum(~np.isfinite(records["gap"]).all(axis=1))),
    # Theorem 3.3 literally: the sign of dΔ/dt at t = 0.
    "initial_gap_velocity": {"share_positive": float(np.mean(gap_rate0 > 0)), "mean": float(np.mean(gap_rate0))},
    "first_trajectory": _story(records),
    "gap_rise": {k: v for k, v in analysis.gap_rise(records["t"], records["gap"], cfg.t_early).items() if k != "rises"},
  }
  if spec.has_gamma and spec.learns_temperature:
    if spec.capped:
      # Lemma 3.1 holds until β reaches the cap; from then on ν is frozen and I falls.
      before = records["beta"] < spec.temperature.beta_cap * (1 - 1e-9)
      out["invariant_drift_before_cap"] = analysis.invariant_drift(np.where(before, records["invariant"], np.nan))
    else:
      out["invariant_drift"] = analysis.invariant_drift(records["invariant"])
    below = np.abs(records["gamma"]) < GAMMA_FLOOR
    out["gamma_below_floor_points"] = int(below.sum())
  if not spec.has_gamma:
    return out
  gamma, beta = records["gamma"], records["beta"]
  mode = spec.temperature.mode
  if _free_learned(spec) and _window_ok(t, cfg.window):
    if spec.reparam.name == "exp":
      out["theorem32"] = analysis.theorem32(records["t"], beta, gamma, spec.rate, *cfg.window)
    if spec.reparam.name == "softplus":
      out["softplus_rate"] = analysis.softplus_rate(records["t"], beta, gamma, spec.rate, *cfg.window)
  edges = [e for e in cfg.exponent_edges if t[1] <= e <= t[-1]]
  if spec.learns_temperature and len(edges) >= 2:
    out["local_exponents"] = {
      "edges": edges,
      "dlog_gamma_dloglog_t": analysis.local_exponents(records["t"], gamma, edges),
      "dlog_gamma_dlog_t": analysis.local_power_of_t(records["t"], gamma, edges),
    }
  if mode == "fixed" and _window_ok(t, cfg.decay_window):
    out["exponential_decay"] = analysis.exponential_decay(records["t"], gamma, *cfg.decay_window)
  if spec.capped and _window_ok(t, cfg.window):
    out["capped"] = analysis.capped_regime(records["t"], beta, gamma, spec.temperature.beta_cap, *cfg.window)
  if mode == "scheduled" and _window_ok(t, cfg.window):
    out["exponential_decay"] = analysis.exponential_decay(records["t"], gamma, *cfg.window)
  return out


def _asymptotic_exponent(spec: FlowSpec) -> float | None:
  """The t → ∞ limit of d log γ / d log log t for a learned flow: γ ∝ β^{−2/c} (or β^{−2s²/c}).

  None for softplus (γ ∝ e^{−β²/c}), which falls faster than any power of 1/log t.
  """
  if spec.reparam.name == "exp":
    return -2.0 / spec.rate
  if spec.reparam.name == "exp_scaled":
    return -2.0 * spec.reparam.scale**2 / spec.rate
  return None


def _first(runs: list[dict], wanted: Callable[[FlowSpec], bool]) -> dict | None:
  """The first run whose flow spec is ``wanted``."""
  return next((r for r in runs if wanted(r["spec"])), None)


def _free_learned(spec: FlowSpec) -> bool:
  """ν follows the gradient, with no cap: the setting of Lemma 3.1 and Theorem 3.2."""
  return spec.learns_temperature and not spec.capped


def findings(runs: list[dict]) -> dict:
  """Cross-run comparisons (the ``reparams`` preset's questions), from the per-run checks.

  Runs are picked by their flow spec (mode, cap, reparameterisation), not by their names.
  """
  out = {}
  learned = [r for r in runs if _free_learned(r["spec"]) and "local_exponents" in r["checks"]]
  if len(learned) > 1:
    out["local_exponents_by_run"] = {
      r["name"]: {
        "edges": r["checks"]["local_exponents"]["edges"],
        "measured": r["checks"]["local_exponents"]["dlog_gamma_dloglog_t"],
        "asymptotic_prediction": _asymptotic_exponent(r["spec"]),
      }
      for r in learned
    }
  exp_run = _first(learned, lambda s: s.reparam.name == "exp")
  soft_run = _first(runs, lambda s: _free_learned(s) and s.reparam.name == "softplus")
  if exp_run and soft_run and "local_exponents" in soft_run["checks"]:
    e = exp_run["checks"]["local_exponents"]["dlog_gamma_dloglog_t"]
    s = soft_run["checks"]["local_exponents"]["dlog_gamma_dloglog_t"]
    out["softplus_vs_exp_local_exponents"] = {
      "edges": exp_run["checks"]["local_exponents"]["edges"],
      "exp": e,
      "softplus": s,
      "softplus_more_negative_everywhere": bool(all(a < b for a, b in zip(s, e))),
      "softplus_exponent_keeps_decreasing": bool(all(b < a for a, b in zip(s[:-1], s[1:]))),
    }
  if soft_run and "softplus_rate" in soft_run["checks"]:
    out["softplus_rate_verdict"] = analysis.softplus_rate_verdict(soft_run["checks"]["softplus_rate"])
  fixed_run = _first(runs, lambda s: s.temperature.mode == "fixed")
  if fixed_run and "exponential_decay" in fixed_run["checks"]:
    out["fixed_tau_exponential"] = fixed_run["checks"]["exponential_decay"]
  capped_run = _first(runs, lambda s: s.capped)
  if capped_run and "capped" in capped_run["checks"]:
    out["capped_saturated_regime"] = capped_run["checks"]["capped"]
  return out
