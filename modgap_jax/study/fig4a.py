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


def theorem32_fit(histories: list[list[dict[str, Any]]], min_step: int) -> dict[str, Any]:
  """Least squares Δ(t) = a + b·x, x = −1/log²t, over the eval points with t > ``min_step``.

  Theorem 3.2: with a learned β = e^ν and a positive margin, Δ(t) = Ω(1/log²t), so against
  x = −1/log²t the gap falls on a line of slope b < 0 (the paper's Fig. 4a). Δ is the mean
  over seeds at each eval step; ``min_step`` is the end of the learning-rate warm-up, before
  which the dynamics are the warm-up's, not the theorem's.

  Returns ``{"r2", "slope", "intercept", "fit_min_step", "points": [[t, x, Δ], ...]}`` (the
  fit's numbers are None with fewer than 3 points).
  """
  steps, gaps = mean_eval_curve(histories, "gap")
  keep = steps > max(min_step, 1)  # log 1 = 0: t = 1 has no x
  t, gap = steps[keep], gaps[keep]
  x = -1.0 / np.log(t) ** 2
  out = {"fit_min_step": int(min_step), "points": [[float(a), float(b), float(c)] for a, b, c in zip(t, x, gap)]}
  if len(t) < 3:
    return {**out, "r2": None, "slope": None, "intercept": None}
  slope, intercept, r2 = linear_fit(x, gap)
  return {**out, "r2": r2, "slope": slope, "intercept": intercept}
