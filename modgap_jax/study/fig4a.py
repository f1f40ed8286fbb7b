"""Fig. 4a: Theorem 3.2's slow closure of the gap, Δ(t) fitted against −1/log²t."""

from __future__ import annotations

from typing import Any

import numpy as np


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
  """Least-squares line y ≈ a + b·x: returns (b, a, R²).

  b = Σ(x−x̄)(y−ȳ) / Σ(x−x̄)², a = ȳ − b·x̄, R² = 1 − Σ(y − a − b·x)² / Σ(y−ȳ)².
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xc, yc = x - x.mean(), y - y.mean()
  slope = float(xc @ yc / (xc @ xc))
  intercept = float(y.mean() - slope * x.mean())
  residual = y - (intercept + slope * x)
  r2 = float(1.0 - residual @ residual / (yc @ yc))
  return slope, intercept, r2


def mean_eval_curve(histories: list[list[dict[str, Any]]], key: str = "gap") -> tuple[np.ndarray, np.ndarray]:
  """(steps, mean over runs of ``key``) at the eval steps every run has."""
  curves = [
    {r["step"]: r[key] for r in records if r.get("split") == "eval" and r.get(key) is not None} for records in histories
  ]
  if not curves:
    return np.zeros(0), np.zeros(0)
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  return np.asarray(steps, np.float64), np.asarray([np.mean([c[s] for c in curves]) for s in steps], np.float64)


def cap_step(histories: list[list[dict[str, Any]]], tau_cap: float | None, rtol: float = 1e-3) -> int | None:
  """The first eval step at which the mean over seeds of τ is at the cap (τ ≤ tau_cap·(1 + rtol)).

  None when ``tau_cap`` is None (a temperature that is not learned) or the cap is never reached.
  """
  if tau_cap is None:
    return None
  steps, taus = mean_eval_curve(histories, "tau")
  at_cap = steps[taus <= tau_cap * (1.0 + rtol)]
  return int(at_cap[0]) if len(at_cap) else None


def theorem32_fit(histories: list[list[dict[str, Any]]], min_step: int, tau_cap: float | None = None) -> dict[str, Any]:
  """Least squares Δ(t) = a + b·x, x = −1/log²t, over the learned-τ phase; and, once τ sits at
  its cap, log Δ(t) = c − r·t over the rest.

  Theorem 3.2: with a learned β = e^ν and a positive margin, Δ(t) = Ω(1/log²t), so against
  x = −1/log²t the gap falls on a line of slope b < 0 (the paper's Fig. 4a). Δ is the mean
  over seeds at each eval step; ``min_step`` is the end of the learning-rate warm-up, before
  which the dynamics are the warm-up's, not the theorem's. When β reaches its cap (τ =
  ``tau_cap``, at eval step t_cap), ν stops and the theorem no longer applies: the learned-τ
  phase is min_step < t < t_cap, and after it β is fixed, so the gap decays at the rate
  2β|ℓ'(κ)|, exponentially in t at a small, saturated-loss rate (MATH.md §3.4, capped β);
  that phase is fitted as a line in (t, log Δ).

  Returns ``{"r2", "slope", "intercept", "fit_min_step", "points": [[t, x, Δ], ...],
  "cap_step", "after_cap"}``: the fit's numbers are None with fewer than 3 points;
  ``after_cap`` is None unless the cap is reached with at least 3 eval points from t_cap on,
  else ``{"from_step", "rate" (r, per step), "r2", "intercept" (c), "points": [[t, Δ], ...]}``.
  """
  steps, gaps = mean_eval_curve(histories, "gap")
  capped_at = cap_step(histories, tau_cap)
  end = capped_at if capped_at is not None else np.inf
  keep = (steps > max(min_step, 1)) & (steps < end)  # log 1 = 0: t = 1 has no x
  t, gap = steps[keep], gaps[keep]
  x = -1.0 / np.log(t) ** 2
  out = {
    "fit_min_step": int(min_step),
    "points": [[float(a), float(b), float(c)] for a, b, c in zip(t, x, gap)],
    "cap_step": capped_at,
    "after_cap": _after_cap_fit(steps, gaps, capped_at),
  }
  if len(t) < 3:
    return {**out, "r2": None, "slope": None, "intercept": None}
  slope, intercept, r2 = linear_fit(x, gap)
  return {**out, "r2": r2, "slope": slope, "intercept": intercept}


def _after_cap_fit(steps: np.ndarray, gaps: np.ndarray, capped_at: int | None) -> dict[str, Any] | None:
  """log Δ(t) = c − r·t over the eval steps t >= capped_at (None with fewer than 3)."""
  if capped_at is None:
    return None
  keep = steps >= capped_at
  t, gap = steps[keep], gaps[keep]
  if len(t) < 3:
    return None
  slope, intercept, r2 = linear_fit(t, np.log(gap))
  points = [[float(a), float(b)] for a, b in zip(t, gap)]
  return {"from_step": int(capped_at), "rate": -slope, "r2": r2, "intercept": intercept, "points": points}
