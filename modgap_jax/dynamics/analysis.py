"""Verification numbers for MATH.md §3, computed on the host from recorded trajectories.

Every function takes NumPy arrays shaped like ``simulate``'s records ([B, T], or [T] for
one trajectory) and returns plain floats (or dicts of floats) for ``summary.json``. Windows
are closed time intervals [t_lo, t_hi]; NaN entries (undefined quantities) are skipped, and
so are points with |γ| < ``GAMMA_FLOOR`` (1e-200) in fits of log γ, where float64 no longer
resolves γ.
"""

from __future__ import annotations

import numpy as np

from modgap_jax.dynamics.integrate import GAMMA_FLOOR


def _rows(x) -> np.ndarray:
  """x as a float64 [B, T] array (a single trajectory becomes B = 1)."""
  x = np.asarray(x, np.float64)
  return x[None] if x.ndim == 1 else x


def _window(t: np.ndarray, t_lo: float, t_hi: float) -> np.ndarray:
  """Boolean mask of the output times in [t_lo, t_hi]."""
  mask = (t >= t_lo) & (t <= t_hi)
  if mask.sum() < 3:
    raise ValueError(f"the window [{t_lo}, {t_hi}] holds {mask.sum()} output times; it needs at least 3")
  return mask


def linear_fit(x, y) -> dict:
  """Least-squares y ≈ slope·x + intercept over the finite points, with R² = 1 − SS_res/SS_tot."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = np.isfinite(x) & np.isfinite(y)
  x, y = x[ok], y[ok]
  if x.size < 3:
    return {"slope": float("nan"), "intercept": float("nan"), "r2": float("nan")}
  slope, intercept = np.polyfit(x, y, 1)
  residual = y - (slope * x + intercept)
  total = np.sum((y - y.mean()) ** 2)
  r2 = 1.0 - np.sum(residual**2) / total if total > 0 else 1.0
  return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2)}


def _resolved(gamma: np.ndarray) -> np.ndarray:
  """Where log |γ| means something: γ finite and |γ| ≥ GAMMA_FLOOR."""
  return np.isfinite(gamma) & (np.abs(gamma) >= GAMMA_FLOOR)


def _ratio(x: np.ndarray) -> float:
  """max/min of a positive series: the factor by which it changes."""
  x = np.abs(x[np.isfinite(x)])
  return float(x.max() / x.min()) if x.size and x.min() > 0 else float("nan")


def invariant_drift(invariant) -> float:
  """Lemma 3.1: max over trajectories and times of |I(t) − I(0)| / max(1, |I(0)|).

  Times where I is NaN (undefined) are skipped; NaN when I is undefined throughout.
  """
  inv = _rows(invariant)
  rel = np.abs(inv - inv[:, :1]) / np.maximum(1.0, np.abs(inv[:, :1]))
  return float(np.nanmax(rel)) if np.isfinite(rel).any() else float("nan")


def theorem32(t, beta, gamma, rate: float, t_lo: float = 1e4, t_hi: float = 1e6) -> dict:
  """Theorem 3.2's mechanism (MATH.md §3.4) for ``exp`` over the window [t_lo, t_hi].

  Per trajectory, then the worst case over the batch:

  - ``beta_vs_log_t_r2`` (min) and ``beta_vs_log_t_slope`` (mean): β ≈ a log t + b.
  - ``gamma_log2t_factor`` (max): max/min of γ·log²t (Θ(1/log²t) means bounded; MATH.md §3.6
    expects it to still move by ≈ 13% in this window).
  - ``gamma_beta2_factor`` (max): max/min of γ·β² (≈ const, as γ is small).
  - ``conserved_factor`` (max): max/min of γ e^{−γ²/2} β^{2/c}, exactly constant for ``exp``.
  - ``log_log_exponent`` (mean, and ``_range``): the slope of log γ against log log t. It
    tends to −2/c only as t → ∞: with β = a log t + b, γ ∝ β^{−2/c} gives a local slope of
    −(2/c) a log t / (a log t + b), which is above −2/c while b > 0;
    ``log_log_exponent_predicted_from_beta_fit`` is that value from the fitted a, b.
  """
  t, beta, gamma = _rows(t), _rows(beta), _rows(gamma)
  out = {k: [] for k in ("r2", "slope", "log2t", "beta2", "conserved", "exponent", "predicted")}
  for tr, br, gr in zip(t, beta, gamma):
    m = _window(tr, t_lo, t_hi)
    tw, bw, gw = tr[m], br[m], gr[m]
    fit = linear_fit(np.log(tw), bw)
    out["r2"].append(fit["r2"])
    out["slope"].append(fit["slope"])
    out["log2t"].append(_ratio(gw * np.log(tw) ** 2))
    out["beta2"].append(_ratio(gw * bw**2))
    out["conserved"].append(_ratio(gw * np.exp(-0.5 * gw**2) * bw ** (2.0 / rate)))
    out["exponent"].append(linear_fit(np.log(np.log(tw)), np.log(np.abs(gw)))["slope"])
    # γ ∝ β^{−2/c} and β = a log t + b give d log γ / d log log t = −(2/c) a log t / β.
    log_t = np.log(tw)
    beta_fit = fit["slope"] * log_t + fit["intercept"]
    out["predicted"].append(float(np.mean(-2.0 / rate * fit["slope"] * log_t / beta_fit)))
  return {
    "window": [t_lo, t_hi],
    "beta_vs_log_t_r2": float(np.min(out["r2"])),
    "beta_vs_log_t_slope": float(np.mean(out["slope"])),
    "gamma_log2t_factor": float(np.max(out["log2t"])),
    "gamma_beta2_factor": float(np.max(out["beta2"])),
    "conserved_factor": float(np.max(out["conserved"])),
    "log_log_exponent": float(np.mean(out["exponent"])),
    "log_log_exponent_range": [float(np.min(out["exponent"])), float(np.max(out["exponent"]))],
    "log_log_exponent_predicted_from_beta_fit": float(np.mean(out["predicted"])),
  }


def _windowed_slopes(t, gamma, edges, x_of_t) -> list:
  """Slope of log|γ| against x_of_t(t) on consecutive windows [edges[k], edges[k+1]], mean over B."""
  t, gamma = _rows(t), _rows(gamma)
  out = []
  for lo, hi in zip(edges[:-1], edges[1:]):
    slopes = []
    for tr, gr in zip(t, gamma):
      m = _window(tr, lo, hi) & _resolved(gr)
      slopes.append(linear_fit(x_of_t(tr[m]), np.log(np.abs(gr[m])))["slope"])
    out.append(float(np.nanmean(slopes)))
  return out


def local_exponents(t, gamma, edges) -> list:
  """d log γ / d log log t, fitted on consecutive windows [edges[k], edges[k+1]] (mean over B).

  A power of 1/log t has a constant local exponent; a faster decay (e.g. e^{−β²}) has one
  that keeps falling.
  """
  return _windowed_slopes(t, gamma, edges, lambda tt: np.log(np.log(tt)))


def local_power_of_t(t, gamma, edges) -> list:
  """d log γ / d log t on consecutive windows (mean over B): −1 − 1/log t for 1/(t log t)."""
  return _windowed_slopes(t, gamma, edges, np.log)


def exponential_decay(t, gamma, t_lo: float, t_hi: float) -> dict:
  """Fit log γ ≈ −rate·t + b on [t_lo, t_hi] (points with γ > 0): MATH.md §3.3 fixed τ.

  Returns the mean rate, the min R² over the batch and the mean R² of the same data
  against log t (a power law), for contrast.
  """
  t, gamma = _rows(t), _rows(gamma)
  rates, r2, r2_power = [], [], []
  for tr, gr in zip(t, gamma):
    m = _window(tr, t_lo, t_hi) & _resolved(gr)
    fit = linear_fit(tr[m], np.log(np.abs(gr[m])))
    rates.append(-fit["slope"])
    r2.append(fit["r2"])
    r2_power.append(linear_fit(np.log(tr[m]), np.log(np.abs(gr[m])))["r2"])
  return {
    "window": [t_lo, t_hi],
    "rate": float(np.mean(rates)),
    "r2": float(np.min(r2)),
    "power_law_r2": float(np.mean(r2_power)),
  }


def gap_rise(t, gap, t_early: float) -> dict:
  """Theorem 3.3 (MATH.md §3.5): how Δ moves from t = 0 to the first output time ≥ t_early.

  Returns the share of trajectories whose Δ rose, the mean and min/max rise, and the rises
  themselves (for Figure 4b's histogram).
  """
  t, gap = _rows(t), _rows(gap)
  k = int(np.argmax(t[0] >= t_early))
  rise = gap[:, k] - gap[:, 0]
  return {
    "t_early": float(t[0, k]),
    "share_rising": float(np.mean(rise > 0)),
    "rising": int(np.sum(rise > 0)),
    "trials": int(rise.size),
    "mean_rise": float(rise.mean()),
    "min_rise": float(rise.min()),
    "max_rise": float(rise.max()),
    "rises": rise.tolist(),
  }


def capped_regime(t, beta, gamma, beta_cap: float, t_lo: float, t_hi: float) -> dict:
  """MATH.md §3.4 with β capped: β pinned at the cap, and γ's slow exponential decay there.

  Once ν stops, γ̇ = 2βγℓ'(κ) with β fixed and a saturated (exponentially small) ℓ', so
  log γ falls linearly in t at a slow rate. The fit runs over the part of [t_lo, t_hi] after
  β first reaches the cap (on every trajectory).
  """
  t, beta, gamma = _rows(t), _rows(beta), _rows(gamma)
  reached = beta >= beta_cap * (1 - 1e-6)
  first = [float(tr[np.argmax(rr)]) if rr.any() else float("nan") for tr, rr in zip(t, reached)]
  if not np.all(np.isfinite(first)):
    return {"beta_cap": beta_cap, "max_beta": float(np.max(beta)), "reached_cap": False}
  lo = max(t_lo, max(first))
  mask = (t >= lo) & (t <= t_hi)
  decay = exponential_decay(t, gamma, lo, t_hi)
  at_cap = np.abs(beta[mask] - beta_cap) <= 1e-6 * beta_cap
  return {
    "window": [lo, t_hi],
    "beta_cap": beta_cap,
    "reached_cap": True,
    "first_time_at_cap": float(max(first)),
    "share_at_cap_after": float(np.mean(at_cap)),
    "max_beta": float(np.max(beta)),
    "gamma_rate": decay["rate"],
    "gamma_rate_r2": decay["r2"],
    "gamma_factor": float(np.max([_ratio(gr[m & _resolved(gr)]) for gr, m in zip(gamma, mask)])),
  }


def softplus_rate(t, beta, gamma, rate: float, t_lo: float, t_hi: float) -> dict:
  """MATH.md §3.4's open question for ``softplus``: γ = Θ(1/(t log t)) or γ ∝ e^{−β²/c}?

  Over [t_lo, t_hi], per trajectory (then worst case / mean):

  - ``t_log_t_gamma_factor``: max/min of γ·t·log t (bounded if γ = Θ(1/(t log t))).
  - ``log_gamma_plus_beta2_over_c_spread``: max − min of log γ + β²/c (bounded, in fact
    nearly constant, if γ ∝ e^{−β²/c}; Lemma 3.1 makes it exact up to e^{−β} terms).
  - ``power_of_t``: the slope of log γ against log t (≈ −1.1 for 1/(t log t)).
  - ``beta_vs_log_t_r2`` / ``_slope``: MATH.md §3.4: β still grows like log t.
  """
  t, beta, gamma = _rows(t), _rows(beta), _rows(gamma)
  tlt, spread, power, logs, beta_fits = [], [], [], [], []
  for tr, br, gr in zip(t, beta, gamma):
    m = _window(tr, t_lo, t_hi) & _resolved(gr)
    tw, bw, gw = tr[m], br[m], np.abs(gr[m])
    tlt.append(_ratio(gw * tw * np.log(tw)))
    spread.append(float(np.ptp(np.log(gw) + bw**2 / rate)))
    power.append(linear_fit(np.log(tw), np.log(gw))["slope"])
    logs.append(float(np.log10(gw[-1])))
    beta_fits.append(linear_fit(np.log(tr[_window(tr, t_lo, t_hi)]), br[_window(tr, t_lo, t_hi)]))
  return {
    "window": [t_lo, t_hi],
    "t_log_t_gamma_factor": float(np.max(tlt)),
    "log_gamma_plus_beta2_over_c_spread": float(np.max(spread)),
    "power_of_t": float(np.mean(power)),
    "log10_gamma_at_window_end": float(np.mean(logs)),
    "beta_vs_log_t_r2": float(np.min([f["r2"] for f in beta_fits])),
    "beta_vs_log_t_slope": float(np.mean([f["slope"] for f in beta_fits])),
  }


# A quantity is "bounded" over the window when it moves less than these (see the verdict).
LOG_GAMMA_PLUS_BETA2_SPREAD_TOL = 1e-3  # e^{−β²/c}: log γ + β²/c is constant up to e^{−β} terms
T_LOG_T_FACTOR_TOL = 10.0  # Θ(1/(t log t)): γ·t·log t stays within a constant factor


def softplus_rate_verdict(
  rate: dict, spread_tol: float = LOG_GAMMA_PLUS_BETA2_SPREAD_TOL, factor_tol: float = T_LOG_T_FACTOR_TOL
) -> dict:
  """Which softplus law the numbers of :func:`softplus_rate` support, against stated thresholds.

  ``e^{-beta^2/c}`` is supported when the spread of log γ + β²/c is at most ``spread_tol``;
  ``1/(t log t)`` when max/min of γ·t·log t is at most ``factor_tol``. ``supports`` lists the
  laws that pass (possibly both, possibly none), and ``statement`` says so in words.
  """
  spread = float(rate["log_gamma_plus_beta2_over_c_spread"])
  factor = float(rate["t_log_t_gamma_factor"])
  supports = [law for law, ok in (("e^{-beta^2/c}", spread <= spread_tol), ("1/(t log t)", factor <= factor_tol)) if ok]
  lo, hi = rate["window"]
  measured = (
    f"over t in [{lo:g}, {hi:g}], log γ + β²/c spreads by {spread:.3g} (threshold {spread_tol:g}) and "
    f"γ·t·log t changes by a factor {factor:.3g} (threshold {factor_tol:g})"
  )
  statement = (
    f"{measured}: the simulator supports " + " and ".join(f"γ ∝ {law}" for law in supports)
    if supports
    else f"{measured}: the simulator supports neither law"
  )
  return {
    "supports": supports,
    "spread": spread,
    "spread_tol": spread_tol,
    "t_log_t_factor": factor,
    "factor_tol": factor_tol,
    "statement": statement,
  }
