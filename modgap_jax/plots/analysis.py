"""Figures of the ``analyze`` task (PNG, Agg), drawn from embeddings and ``analysis.analyze``'s dict.

- ``pca.png``: paired embeddings on their top two principal axes, pairs joined (paper Fig. 1).
- ``sphere.png``: the same pairs on S², the top three principal axes re-normalised.
- ``shift.png``: the gap-shift curves against λ (loss, R@1 both ways, zero-shot, Δ).
- ``gap_spectrum.png``: per-coordinate shares of ‖g‖², largest first, and their running sum.
- ``cosine_hist.png``: image–image, text–text, image–text and paired cosine densities.
- ``compare.png`` (compare mode): one column per input; PCA, cosines and the shift loss.

Images are red and texts blue, as in the paper's Figure 1 and ``plots.training``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from modgap_jax.plots.training import IMAGE_COLOR, TEXT_COLOR, _save, paired_pca_axes  # noqa: E402

CROSS_COLOR = "tab:purple"
PAIRED_COLOR = "tab:green"


def sample_pairs(
  image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray, *, max_pairs: int = 300, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """A seeded sample of at most ``max_pairs`` caption pairs (image row, caption row), unit rows."""
  m = len(text_emb)
  keep = np.sort(np.random.default_rng(seed).choice(m, size=min(m, max_pairs), replace=False))
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  return unit(np.asarray(image_emb, np.float64)[text_to_image[keep]]), unit(np.asarray(text_emb, np.float64)[keep])


def _pca_axes(ax, x: np.ndarray, y: np.ndarray, title: str) -> None:
  paired_pca_axes(ax, x, y, marker_size=8, legend_size=7)
  ax.set_title(title, fontsize=9)


def plot_pca(x: np.ndarray, y: np.ndarray, path: str, *, title: str = "") -> None:
  """PCA of paired unit rows (x_k, y_k), each pair joined by a grey line."""
  fig, ax = plt.subplots(figsize=(5.2, 5.2))
  _pca_axes(ax, x, y, title or "paired embeddings (PCA)")
  fig.tight_layout()
  _save(fig, path)


def sphere_coordinates(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Both sets projected on the top three principal axes of their union, then put on S²."""
  union = np.concatenate([x, y]).astype(np.float64)
  mean = union.mean(axis=0)
  _, _, vt = np.linalg.svd(union - mean, full_matrices=False)
  basis = np.zeros((3, union.shape[1]))
  basis[: min(3, len(vt))] = vt[:3]
  # The uncentred projection keeps the cone's offset from the origin visible on the sphere.
  project = lambda a: a @ basis.T / np.maximum(np.linalg.norm(a @ basis.T, axis=1, keepdims=True), 1e-12)
  return project(x), project(y)


def plot_sphere(x: np.ndarray, y: np.ndarray, path: str, *, title: str = "") -> None:
  """A 3-D view of the pairs on S² (top three principal axes), pairs joined."""
  xs, ys = sphere_coordinates(x, y)
  fig = plt.figure(figsize=(5.6, 5.6))
  ax = fig.add_subplot(projection="3d")
  u, v = np.mgrid[0 : 2 * np.pi : 30j, 0 : np.pi : 15j]
  ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.3)
  for a, b in zip(xs, ys):
    ax.plot(*zip(a, b), color="0.5", lw=0.4, alpha=0.6)
  ax.scatter(*xs.T, s=7, color=IMAGE_COLOR, label="image", depthshade=False)
  ax.scatter(*ys.T, s=7, color=TEXT_COLOR, label="text", depthshade=False)
  ax.set_box_aspect((1, 1, 1))
  ax.set_title(title or "pairs on S² (top three principal axes)", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  _save(fig, path)


def plot_shift(result: Mapping[str, Any], path: str, *, title: str = "") -> None:
  """The gap-shift experiment: loss, R@1 (and zero-shot), and Δ against λ; best λ dashed."""
  shift = result["shift"]
  lam = np.asarray(shift["lambda"])
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  axes[0].plot(lam, shift["loss"], "o-", ms=3, color="k")
  axes[0].set_title(f"CLIP loss at β = {result['beta']:g}")
  for key, color, label in (
    ("i2t_r1", IMAGE_COLOR, "image→text R@1"),
    ("t2i_r1", TEXT_COLOR, "text→image R@1"),
    ("zeroshot_top1", PAIRED_COLOR, "zero-shot top-1"),
  ):
    if key in shift:
      axes[1].plot(lam, shift[key], "o-", ms=3, color=color, label=label)
  axes[1].set_title("retrieval / zero-shot")
  axes[1].legend(fontsize=7)
  axes[2].plot(lam, shift["gap"], "o-", ms=3, color=CROSS_COLOR)
  axes[2].set_title("modality gap Δ after the shift")
  for ax in axes:
    ax.axvline(result["shift_best_lambda"], color="0.4", ls="--", lw=0.8)
    ax.set_xlabel("λ  (x − λg/2, y + λg/2)")
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def plot_gap_spectrum(result: Mapping[str, Any], path: str, *, top: int = 50, title: str = "") -> None:
  """Shares g_k²/‖g‖² of the largest ``top`` coordinates, and the running sum over all."""
  share = np.sort(np.asarray(result["gap_share"]))[::-1]
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
  k = min(top, len(share))
  axes[0].bar(np.arange(1, k + 1), share[:k], color=CROSS_COLOR)
  axes[0].set_xlabel("coordinate rank (largest share first)")
  axes[0].set_title(f"share of ‖g‖² per coordinate (top {k})")
  axes[1].plot(np.arange(1, len(share) + 1), np.cumsum(share), color="k")
  for q, key in ((0.5, "gap_dims_50"), (0.9, "gap_dims_90")):
    axes[1].axhline(q, color="0.6", ls=":", lw=0.8)
    axes[1].axvline(result[key], color="0.4", ls="--", lw=0.8)
    axes[1].annotate(
      f"{int(q * 100)}%: {result[key]} dims", (result[key], q), fontsize=7, xytext=(4, -10), textcoords="offset points"
    )
  axes[1].set_xscale("log")
  axes[1].set_xlabel("number of coordinates")
  axes[1].set_title("cumulative share of ‖g‖²")
  for ax in axes:
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  _save(fig, path)


def _hist_axes(ax, result: Mapping[str, Any], title: str) -> None:
  hist = result["cosine_hist"]
  edges = np.asarray(hist["edges"])
  centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
  for key, color, label, mean_key in (
    ("image", IMAGE_COLOR, "image–image", "cone_image"),
    ("text", TEXT_COLOR, "text–text", "cone_text"),
    ("cross", CROSS_COLOR, "image–text (all)", "cross_cosine"),
    ("paired", PAIRED_COLOR, "paired", "paired_cosine"),
  ):
    counts = np.asarray(hist[key], np.float64)
    if counts.sum() > 0:
      mean = result.get(mean_key)
      suffix = f" (mean {mean:.3f})" if mean is not None else ""
      ax.step(centres, counts / (counts.sum() * width), where="mid", color=color, lw=1.1, label=label + suffix)
  ax.set_xlabel("cosine similarity")
  ax.set_ylabel("density")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=6)
  ax.grid(alpha=0.3)


def plot_cosine_histograms(result: Mapping[str, Any], path: str, *, title: str = "") -> None:
  """Densities of the cone (within-modality), cross-modal and paired cosines."""
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  _hist_axes(ax, result, title or "cosine similarities (cone effect)")
  fig.tight_layout()
  _save(fig, path)


def plot_compare(entries: Sequence[tuple[str, Mapping[str, Any], np.ndarray, np.ndarray]], path: str) -> None:
  """Side by side, one column per (name, result, sampled image rows, sampled text rows).

  Rows: the PCA of the pairs, the cosine densities, and the shift loss and R@1 against λ.
  """
  cols = len(entries)
  fig, axes = plt.subplots(3, cols, figsize=(4.2 * cols, 11.5), squeeze=False)
  for j, (name, result, x, y) in enumerate(entries):
    _pca_axes(axes[0, j], x, y, f"{name}\nΔ = {result['gap']:.3f}")
    _hist_axes(axes[1, j], result, "cosines")
    shift = result["shift"]
    ax = axes[2, j]
    ax.plot(shift["lambda"], shift["loss"], "o-", ms=2.5, color="k", label="loss")
    ax.axvline(result["shift_best_lambda"], color="0.4", ls="--", lw=0.8)
    ax.set_xlabel("λ")
    ax.set_title(f"gap shift: best λ = {result['shift_best_lambda']:.2f}", fontsize=9)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(shift["lambda"], shift["i2t_r1"], color=IMAGE_COLOR, lw=1, label="i2t R@1")
    twin.plot(shift["lambda"], shift["t2i_r1"], color=TEXT_COLOR, lw=1, label="t2i R@1")
    twin.set_ylim(0, 1.02)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=6, loc="lower left")
  fig.tight_layout()
  _save(fig, path)
