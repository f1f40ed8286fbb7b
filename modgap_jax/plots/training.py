"""Figures of a training run: curves over steps, and the paper's Figure 1 PCA picture."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from modgap_jax import run_io  # noqa: E402

IMAGE_COLOR = "tab:red"  # the paper's Figure 1 colours: images red, texts blue
TEXT_COLOR = "tab:blue"


def _series(records: Sequence[dict[str, Any]], split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  rows = [(r["step"], r[key]) for r in records if r.get("split") == split and r.get(key) is not None]
  if not rows:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*rows)
  return np.asarray(steps), np.asarray(values, dtype=float)


def plot_panels(panels: Sequence[tuple[str, str]], xlabel: str, draw: Callable[[Any, str], None], path: str) -> None:
  """One row of panels, one per (key, title): ``draw(ax, key)`` draws its lines, labelled."""
  fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.6))
  for ax, (key, title) in zip(np.atleast_1d(axes), panels):
    draw(ax, key)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def plot_curves(records: Sequence[dict[str, Any]], path: str) -> None:
  """Loss, τ and the modality gap Δ against the step, for the train and eval splits."""

  def draw(ax, key):
    for split, style in (("train", "-"), ("eval", "o-")):
      steps, values = _series(records, split, key)
      if len(steps):
        ax.plot(steps, values, style, ms=3, lw=1.2, label=split)

  plot_panels((("loss", "CLIP loss"), ("tau", "temperature τ"), ("gap", "modality gap Δ")), "step", draw, path)


def pca_2d(*sets: np.ndarray) -> list[np.ndarray]:
  """Projects every set onto the top two principal axes of their union."""
  union = np.concatenate(sets, axis=0).astype(np.float64)
  mean = union.mean(axis=0)
  _, _, vt = np.linalg.svd(union - mean, full_matrices=False)
  return [(s - mean) @ vt[:2].T for s in sets]


def gap_axis_2d(image_emb: np.ndarray, text_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Coordinates that show the gap whatever its share of the variance.

  x = ⟨e − m, u⟩ on the unit gap vector u = g/‖g‖, g = mean(image) − mean(text) (MATH.md §2),
  so the two modalities' mean x differ by exactly ‖g‖ = Δ; y = ⟨e − m, v⟩ on the top principal
  axis v of what the union varies in once u is projected out (v ⟂ u). m is the union's mean.
  Plain PCA hides a gap of 0.2 when the within-modality spread is larger: then PC 1 and 2
  follow the spread and the two clouds overlap on the page.
  """
  image_emb, text_emb = np.asarray(image_emb, np.float64), np.asarray(text_emb, np.float64)
  gap = image_emb.mean(axis=0) - text_emb.mean(axis=0)
  norm = np.linalg.norm(gap)
  u = gap / norm if norm > 0 else np.eye(len(gap))[0]
  union = np.concatenate([image_emb, text_emb])
  centred = union - union.mean(axis=0)
  rest = centred - np.outer(centred @ u, u)
  _, _, vt = np.linalg.svd(rest, full_matrices=False)
  coords = np.stack([centred @ u, centred @ vt[0]], axis=1)
  return coords[: len(image_emb)], coords[len(image_emb) :]


def draw_pairs(ax, img2d: np.ndarray, txt2d: np.ndarray, *, axis_labels=("PC 1", "PC 2"), marker_size=9, legend_size=8):
  """Draws 2-D pairs (image_k, text_k): images red, texts blue, each pair joined by a grey line."""
  for a, b in zip(img2d, txt2d):
    ax.plot([a[0], b[0]], [a[1], b[1]], color="0.6", lw=0.4, alpha=0.6, zorder=1)
  ax.scatter(img2d[:, 0], img2d[:, 1], s=marker_size, color=IMAGE_COLOR, label="image", zorder=2)
  ax.scatter(txt2d[:, 0], txt2d[:, 1], s=marker_size, color=TEXT_COLOR, label="text", zorder=2)
  ax.set_xlabel(axis_labels[0])
  ax.set_ylabel(axis_labels[1])
  ax.legend(fontsize=legend_size)
  ax.set_aspect("equal", adjustable="datalim")


def paired_pca_axes(ax, image_emb: np.ndarray, text_emb: np.ndarray, *, marker_size=9, legend_size=8) -> None:
  """Draws pairs (image_k, text_k) on their top two principal axes (:func:`draw_pairs`)."""
  draw_pairs(ax, *pca_2d(image_emb, text_emb), marker_size=marker_size, legend_size=legend_size)


def plot_embedding_pca(
  image_emb: np.ndarray, text_emb: np.ndarray, path: str, *, max_pairs: int = 300, title: str = "", seed: int = 0
) -> None:
  """Figure 1 style, two panels of the same paired image (red) and text (blue) embeddings.

  Left: PCA of the union (:func:`pca_2d`). Right: the gap axis against the top principal
  axis of the rest (:func:`gap_axis_2d`), where the two modalities' centres (the large crosses)
  lie Δ apart along x. Pairs are joined by grey lines.
  """
  n = len(image_emb)
  keep = np.random.default_rng(seed).choice(n, size=min(n, max_pairs), replace=False)
  panels = (
    (pca_2d(image_emb[keep], text_emb[keep]), ("PC 1", "PC 2"), "PCA"),
    (gap_axis_2d(image_emb[keep], text_emb[keep]), ("gap direction g/‖g‖", "top PC of the rest"), "gap axis"),
  )
  fig, axes = plt.subplots(1, 2, figsize=(10.4, 5.2))
  for ax, ((img2d, txt2d), axis_labels, name) in zip(axes, panels):
    draw_pairs(ax, img2d, txt2d, axis_labels=axis_labels)
    for points, color in ((img2d, IMAGE_COLOR), (txt2d, TEXT_COLOR)):  # each modality's centre
      ax.scatter(*points.mean(axis=0), s=160, marker="X", color=color, edgecolor="black", zorder=3)
    ax.set_title(name)
  fig.suptitle(title or "image and text embeddings")
  fig.tight_layout()
  _save(fig, path)


def _save(fig, path: str) -> None:
  run_io.save_figure(fig, path, dpi=110, format="png")
