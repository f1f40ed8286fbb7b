"""Figures for the gradient-flow simulator (MATH.md §3): matplotlib, Agg backend, PNG.

Each function draws one figure and returns it; :func:`save` writes it atomically.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from modgap_jax import run_io  # noqa: E402
from modgap_jax.plots.training import IMAGE_COLOR, TEXT_COLOR  # noqa: E402  (one palette: Fig. 1's)


def save(fig, path: str) -> None:
  """Writes ``fig`` as PNG under a temporary name beside ``path``, then renames it into place."""
  run_io.save_figure(fig, path, format="png", dpi=110, bbox_inches="tight")


def _time_axis(ax, t: np.ndarray) -> np.ndarray:
  """Log x-axis when the grid spans decades (t = 0 dropped), linear otherwise."""
  positive = t[t > 0]
  if positive.size and positive.max() / positive.min() > 1e3:
    ax.set_xscale("log")
    return t > 0
  return np.ones_like(t, bool)


def gap_and_tau(runs: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]):
  """Δ(t) and τ(t), one colour per run, as in the paper's Fig. 2 (the gap and τ move together).

  ``runs`` holds (name, t [T], gap [B, T], tau [B, T]); the first row of each run is drawn
  solid and the others faint.
  """
  fig, (ax_gap, ax_tau) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
  for k, (name, t, gap, tau) in enumerate(runs):
    color = f"C{k % 10}"
    keep = _time_axis(ax_gap, t)
    _time_axis(ax_tau, t)
    for row in range(1, min(gap.shape[0], 20)):
      ax_gap.plot(t[keep], gap[row, keep], color=color, alpha=0.2, lw=0.8)
      ax_tau.plot(t[keep], tau[row, keep], color=color, alpha=0.2, lw=0.8)
    ax_gap.plot(t[keep], gap[0, keep], color=color, lw=1.8, label=name)
    ax_tau.plot(t[keep], tau[0, keep], color=color, lw=1.8, label=name)
  ax_gap.set_ylabel("gap Δ")
  ax_tau.set_ylabel("temperature τ")
  ax_tau.set_yscale("log")
  ax_tau.set_xlabel("flow time t")
  ax_gap.legend(fontsize=8)
  ax_gap.set_title("Modality gap and temperature along the flow")
  fig.tight_layout()
  return fig


def _orthographic(points: np.ndarray, azimuth: float = 0.6, elevation: float = 0.35) -> np.ndarray:
  """Projects unit vectors of R³ onto the view plane; also returns depth (toward viewer > 0)."""
  ca, sa, ce, se = np.cos(azimuth), np.sin(azimuth), np.cos(elevation), np.sin(elevation)
  right = np.array([-sa, ca, 0.0])
  up = np.array([-se * ca, -se * sa, ce])
  toward = np.array([ce * ca, ce * sa, se])
  return np.stack([points @ right, points @ up, points @ toward], axis=-1)


def sphere_snapshots(times: list[float], images: list[np.ndarray], texts: list[np.ndarray]):
  """Figure 2 style: both modalities on S² at several times, pairs joined by lines.

  Orthographic projection; points on the far hemisphere are drawn hollow. ``images`` and
  ``texts`` hold one [n, 3] array per time.
  """
  k = len(times)
  fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 2.9))
  axes = np.atleast_1d(axes)
  circle = np.linspace(0, 2 * np.pi, 200)
  for ax, time, image, text in zip(axes, times, images, texts):
    ax.plot(np.cos(circle), np.sin(circle), color="0.7", lw=0.8)
    pi, pt = _orthographic(image), _orthographic(text)
    for a, b in zip(pi, pt):
      ax.plot([a[0], b[0]], [a[1], b[1]], color="0.5", lw=0.8)
    for proj, color, label in ((pi, IMAGE_COLOR, "image"), (pt, TEXT_COLOR, "text")):
      front = proj[:, 2] >= 0
      ax.scatter(proj[front, 0], proj[front, 1], s=28, color=color, label=label, zorder=3)
      ax.scatter(proj[~front, 0], proj[~front, 1], s=28, facecolors="none", edgecolors=color, zorder=3)
    ax.set_aspect("equal")
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.axis("off")
    ax.set_title(f"t = {time:.3g}", fontsize=9)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="upper right", fontsize=8, frameon=False)
  fig.suptitle("Both modalities on the sphere (orthographic view; hollow: far side; lines join pairs)", fontsize=10)
  fig.tight_layout()
  return fig


def gap_rise_histogram(rises: np.ndarray, t_early: float):
  """Figure 4b style: the histogram over inits of Δ(t_early) − Δ(0)."""
  rises = np.asarray(rises)
  fig, ax = plt.subplots(figsize=(5.5, 3.5))
  ax.hist(rises, bins=min(30, max(5, rises.size // 3)), color="tab:green", alpha=0.8)
  ax.axvline(0.0, color="k", lw=0.8)
  ax.set_xlabel(f"Δ(t={t_early:.3g}) − Δ(0)")
  ax.set_ylabel("initialisations")
  ax.set_title(f"Early change of the gap: {np.mean(rises > 0):.0%} of {rises.size} rise, mean {rises.mean():.3g}")
  fig.tight_layout()
  return fig


def gamma_vs_inverse_log2(runs: list[tuple[str, np.ndarray, np.ndarray]], t_from: float = 1e2):
  """Theorem 3.2's picture (the paper's Fig. 4a axes): γ against 1/log²t, and γ·log²t.

  ``runs`` holds (name, t [T], gamma [B, T]); every row is drawn, row 0 solid. Left: γ
  against 1/log²t for t ≥ ``t_from``, where Θ(1/log²t) is a curve into the origin with a
  finite slope. Right: γ·log²t against t, bounded if γ = Θ(1/log²t).
  """
  fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(10, 4))
  for k, (name, t, gamma) in enumerate(runs):
    color = f"C{k % 10}"
    late = t >= max(t_from, np.e)
    x = 1.0 / np.log(t[late]) ** 2
    for row in range(gamma.shape[0]):
      style = dict(color=color, lw=1.6, label=name) if row == 0 else dict(color=color, lw=0.8, alpha=0.3)
      ax.plot(x, gamma[row, late], **style)
      ax_ratio.plot(t[late], gamma[row, late] * np.log(t[late]) ** 2, **style)
  ax.set_xlabel("1 / log² t")
  ax.set_ylabel("γ")
  ax.set_xlim(left=0)
  ax.set_ylim(bottom=0)
  ax.set_title(f"γ against 1/log²t (t ≥ {t_from:g})")
  ax_ratio.set_xscale("log")
  ax_ratio.set_xlabel("flow time t")
  ax_ratio.set_ylabel("γ · log² t")
  ax_ratio.set_ylim(bottom=0)
  ax_ratio.set_title("γ·log²t: bounded ⇔ γ = O(1/log²t)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
