"""Figures of a study: the paper's relations between τ, the gap, retrieval and uniformity."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def _point(cell: dict[str, Any], key: str) -> tuple[float, float]:
  m = cell["metrics"].get(key) or {"mean": None, "std": 0.0}
  return (np.nan if m["mean"] is None else m["mean"]), m["std"]


def _scatter(ax, cells, x_key, y_key, label=None, annotate=True, **kwargs):
  for i, cell in enumerate(cells):
    (x, xe), (y, ye) = _point(cell, x_key), _point(cell, y_key)
    ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", capsize=3, label=label if i == 0 else None, **kwargs)
    if annotate:
      ax.annotate(cell["cell"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_study(results: dict[str, Any], histories: dict[str, list[list[dict[str, Any]]]], workdir: str) -> None:
  """Writes the study's PNG figures into ``workdir``."""
  cells = [c for c in results["cells"] if c["seeds"]]
  if not cells:
    return
  flt = [c for c in cells if c["cell"].startswith("flt=")]
  if flt:  # Table 3's relation: the gap falls as the fixed τ rises.
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    _scatter(ax, flt, "tau", "gap")
    ax.set_xscale("log")
    ax.set(xlabel="fixed temperature τ", ylabel="modality gap Δ", title="gap against τ (FLT)")
    ax.grid(alpha=0.3)
    _save(fig, os.path.join(workdir, "gap_vs_tau.png"))

  fig, ax = plt.subplots(figsize=(5, 3.8))  # retrieval rises as the gap falls, then collapses
  _scatter(ax, cells, "gap", "t2i_r1", label="image retrieval (t2i R@1)", color="tab:blue")
  _scatter(ax, cells, "gap", "i2t_r1", label="text retrieval (i2t R@1)", color="tab:orange", annotate=False)
  ax.set(xlabel="modality gap Δ", ylabel="R@1", title="retrieval against the gap")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  _save(fig, os.path.join(workdir, "retrieval_vs_gap.png"))

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))  # accuracies follow uniformity, not the gap
  for ax, key, title in zip(axes, ("zeroshot_top1", "linear_probe_top1"), ("zero-shot top-1", "linear probe top-1")):
    _scatter(ax, cells, "uniformity_w2", key)
    ax.set(xlabel="uniformity −W2 (union)", ylabel=title, title=f"{title} against uniformity")
    ax.grid(alpha=0.3)
  _save(fig, os.path.join(workdir, "accuracy_vs_uniformity.png"))

  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)  # τ(t) and Δ(t), every cell
  for cell in cells:
    for ax, key in zip(axes, ("tau", "gap")):
      series = [np.asarray([(r["step"], r[key]) for r in records if r["split"] == "eval"]) for records in
                histories.get(cell["cell"], [])]
      series = [s for s in series if len(s)]
      if not series:
        continue
      length = min(len(s) for s in series)
      stacked = np.stack([s[:length] for s in series])
      ax.plot(stacked[0, :, 0], stacked[:, :, 1].mean(axis=0), "o-", ms=2.5, lw=1.2, label=cell["cell"])
  axes[0].set(xlabel="step", ylabel="τ", title="temperature τ(t) (eval points)")
  axes[1].set(xlabel="step", ylabel="Δ", title="modality gap Δ(t) on the held-out split")
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, ncol=2)
  _save(fig, os.path.join(workdir, "tau_gap_over_steps.png"))

  if results.get("r2") is not None:  # Theorem 3.2 on real data, the paper's Fig. 4a
    t, gap = np.asarray(results["points"], dtype=float).T
    x = -1.0 / np.log(t) ** 2
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.plot(x, gap, "o", ms=3, label="eval points")
    grid = np.linspace(x.min(), x.max(), 50)
    ax.plot(grid, results["intercept"] + results["slope"] * grid, "-", label=f"fit, R² = {results['r2']:.3f}")
    ax.set(xlabel="−1 / log² t", ylabel="modality gap Δ", title="Theorem 3.2 (Fig. 4a)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, os.path.join(workdir, "fig4a.png"))
