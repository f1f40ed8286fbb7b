"""Figures of a study (PNG, Agg): the paper's relations between τ, the gap, retrieval and uniformity.

- ``gap_vs_tau.png``: Δ against the fixed τ over the FLT cells (Table 3's trend), log-x.
- ``retrieval_vs_gap.png``: both R@1 against Δ, every cell annotated (MATH.md §5.4: retrieval
  rises as the gap falls, then collapses at very large τ).
- ``accuracy_vs_uniformity.png``: zero-shot and linear probe against uniformity −W2.
- ``tau_gap_over_steps.png``: τ(t) (train lines) and held-out Δ(t) (eval lines) of every
  cell on shared axes, mean over seeds with a ±1 std band.
- ``fig4a.png``: Δ against −1/log²t with the Theorem 3.2 fit; ``fig4b.png``: the rises of Fig. 4b.
- ``imbalance.png`` (the imbalance study): final τ, Δ and text R@1 against the caption detail,
  one line per method.

Error bars are the sample std over seeds, drawn where a cell has several.
"""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from modgap_jax import run_io  # noqa: E402
from modgap_jax.plots.training import plot_panels  # noqa: E402


def _point(cell: dict[str, Any], key: str) -> tuple[float, float]:
  """(mean, std) of a cell's metric; NaN when it has none."""
  m = cell["metrics"].get(key)
  if not m or m["mean"] is None:
    return np.nan, 0.0
  return m["mean"], m["std"]


def _scatter(ax, cells, x_key, y_key, label=None, annotate=True, scale=1.0, **kwargs):
  for i, cell in enumerate(cells):
    (x, xe), (y, ye) = _point(cell, x_key), _point(cell, y_key)
    ax.errorbar(
      x,
      y * scale,
      xerr=xe or None,
      yerr=(ye * scale) or None,
      fmt="o",
      capsize=3,
      label=label if i == 0 else None,
      **kwargs,
    )
    if annotate and np.isfinite(x) and np.isfinite(y):
      ax.annotate(cell["cell"], (x, y * scale), fontsize=7, xytext=(3, 3), textcoords="offset points")


def _save(fig, path):
  fig.tight_layout()
  run_io.save_figure(fig, path, dpi=120)


def mean_curve(histories: list[list[dict[str, Any]]], split: str, key: str) -> tuple[np.ndarray, ...]:
  """(steps, mean, std) of ``key`` over runs, at the ``split`` steps every run logged."""
  curves = [
    {r["step"]: r[key] for r in records if r.get("split") == split and r.get(key) is not None} for records in histories
  ]
  curves = [c for c in curves if c]
  if not curves:
    return np.zeros(0), np.zeros(0), np.zeros(0)
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  values = np.asarray([[c[s] for s in steps] for c in curves], np.float64)
  std = values.std(axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))
  return np.asarray(steps), values.mean(axis=0), std


def plot_gap_vs_tau(cells, path):
  flt = [c for c in cells if c["cell"].startswith("flt=")]
  if not flt:
    return
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  _scatter(ax, flt, "tau", "gap")
  ax.set_xscale("log")
  ax.set(xlabel="fixed temperature τ", ylabel="modality gap Δ", title="gap against τ (FLT sweep)")
  ax.grid(alpha=0.3)
  _save(fig, path)


def plot_retrieval_vs_gap(cells, path):
  fig, ax = plt.subplots(figsize=(5, 3.8))
  _scatter(ax, cells, "gap", "t2i_r1", label="image retrieval (t2i R@1)", scale=100, color="tab:blue")
  _scatter(ax, cells, "gap", "i2t_r1", label="text retrieval (i2t R@1)", scale=100, color="tab:orange", annotate=False)
  ax.set(xlabel="modality gap Δ", ylabel="R@1 (%)", title="retrieval against the gap")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  _save(fig, path)


def plot_accuracy_vs_uniformity(cells, path):
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
  for ax, key, title in zip(axes, ("zeroshot_top1", "linear_probe_top1"), ("zero-shot top-1", "linear probe top-1")):
    _scatter(ax, cells, "uniformity_w2", key, scale=100)
    ax.set(xlabel="uniformity −W2 (union)", ylabel=f"{title} (%)", title=f"{title} against uniformity")
    ax.grid(alpha=0.3)
  _save(fig, path)


def plot_tau_gap_over_steps(cells, histories, path):
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
  for cell in cells:
    runs = histories.get(cell["cell"], [])
    for ax, split, key in zip(axes, ("train", "eval"), ("tau", "gap")):
      steps, mean, std = mean_curve(runs, split, key)
      if not len(steps):
        continue
      (line,) = ax.plot(
        steps,
        mean,
        "-" if split == "train" else "o-",
        ms=2.5,
        lw=1.2,
        label=f"{cell['cell']} ({len(runs)} seed{'s' if len(runs) > 1 else ''})",
      )
      if len(runs) > 1:
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, lw=0)
  axes[0].set(xlabel="step", ylabel="τ", title="temperature τ(t)")
  axes[0].set_yscale("log")
  axes[1].set(xlabel="step", ylabel="Δ", title="modality gap Δ(t), held-out split")
  for ax in axes:
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7, ncol=2)
  _save(fig, path)


def plot_fig4a(results, path):
  """Δ against x = −1/log²t with the least-squares line (the paper's Fig. 4a)."""
  points = np.asarray(results["points"], np.float64).reshape(-1, 3)
  after = results.get("after_cap")
  fig, axes = plt.subplots(1, 2 if after else 1, figsize=(9.0 if after else 4.5, 3.5), squeeze=False)
  ax = axes[0, 0]
  ax.plot(points[:, 1], points[:, 2], "o", ms=3, label=f"eval points, t > {results['fit_min_step']}")
  if results.get("r2") is not None:
    grid = np.linspace(points[:, 1].min(), points[:, 1].max(), 50)
    ax.plot(
      grid,
      results["intercept"] + results["slope"] * grid,
      "-",
      label=f"Δ = {results['intercept']:.3f} + {results['slope']:.3f}·x, R² = {results['r2']:.3f}",
    )
  ax.set(xlabel="x = −1 / log² t", ylabel="modality gap Δ", title="Theorem 3.2 on real data (Fig. 4a)")
  if after:
    _plot_after_cap(axes[0, 1], after)
  for ax in axes[0]:
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
  _save(fig, path)


def _plot_after_cap(ax, after: dict[str, Any]) -> None:
  """Δ against t once τ is at its cap, on a log axis, with the fit log Δ = c − r·t."""
  points = np.asarray(after["points"], np.float64).reshape(-1, 2)
  ax.plot(points[:, 0], points[:, 1], "o", ms=3, label=f"eval points, t ≥ {after['from_step']}")
  ax.plot(
    points[:, 0],
    np.exp(after["intercept"] - after["rate"] * points[:, 0]),
    "-",
    label=f"log Δ = {after['intercept']:.3f} − {after['rate']:.3g}·t, R² = {after['r2']:.3f}",
  )
  ax.set_yscale("log")
  ax.set(xlabel="step t", ylabel="modality gap Δ", title="after τ reaches its cap")


def plot_study(results: dict[str, Any], histories: dict[str, list[list[dict[str, Any]]]], workdir: str) -> None:
  """Writes the study's figures into ``workdir`` (cells without a finished seed are left out)."""
  cells = [c for c in results["cells"] if c["seeds"]]
  if not cells:
    return
  plot_gap_vs_tau(cells, os.path.join(workdir, "gap_vs_tau.png"))
  plot_retrieval_vs_gap(cells, os.path.join(workdir, "retrieval_vs_gap.png"))
  plot_accuracy_vs_uniformity(cells, os.path.join(workdir, "accuracy_vs_uniformity.png"))
  plot_tau_gap_over_steps(cells, histories, os.path.join(workdir, "tau_gap_over_steps.png"))
  if results.get("points"):
    plot_fig4a(results, os.path.join(workdir, "fig4a.png"))
  if results.get("study") == "imbalance":
    plot_imbalance(cells, os.path.join(workdir, "imbalance.png"))


def plot_imbalance(cells: list[dict[str, Any]], path: str) -> None:
  """Final τ, Δ and text R@1 against the caption detail of ``detail=<p>,<method>`` cells."""
  methods: dict[str, list[tuple[float, dict[str, Any]]]] = {}
  for c in cells:
    detail, _, method = c["cell"].partition(",")
    methods.setdefault(method, []).append((float(detail.removeprefix("detail=")), c))

  def draw(ax, key):
    for method, entries in sorted(methods.items()):
      entries.sort(key=lambda e: e[0])
      points = [(d, *_point(c, key)) for d, c in entries]
      x, y, err = (np.asarray(v, np.float64) for v in zip(*points))
      ax.errorbar(x, y, yerr=err, marker="o", capsize=3, lw=1.2, label=method)

  panels = (("tau", "final τ"), ("gap", "modality gap Δ"), ("i2t_r1", "text retrieval R@1"))
  plot_panels(panels, "caption detail (P[attribute named])", draw, path)


def plot_fig4b(results: dict[str, Any], path: str) -> None:
  """Histogram of Δ(end) − Δ(0) over the initialisations (the paper's Fig. 4b)."""
  rises = np.asarray(results["rises"], np.float64)
  paper = results["paper"]
  fig, ax = plt.subplots(figsize=(5, 3.6))
  ax.hist(rises, bins=min(30, max(5, len(rises) // 3)), color="tab:blue", alpha=0.8)
  ax.axvline(0.0, color="k", lw=1)
  ax.axvline(
    rises.mean(),
    color="tab:red",
    ls="--",
    lw=1.2,
    label=f"ours: mean {rises.mean():.3f}, {100 * np.mean(rises > 0):.0f} % rise",
  )
  ax.axvline(
    paper["mean_rise"],
    color="tab:green",
    ls=":",
    lw=1.2,
    label=f"paper: mean ≈ {paper['mean_rise']}, {100 * paper['share_rising']:.0f} % rise",
  )
  ax.set(
    xlabel=f"Δ({results['num_steps']}) − Δ(0)",
    ylabel="initialisations",
    title=f"Theorem 3.3: {len(rises)} random inits, {results['num_steps']} steps (Fig. 4b)",
  )
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  _save(fig, path)
