"""Figures of a training run: curves over steps, and the paper's Figure 1 PCA picture."""

from __future__ import annotations

from collections.abc import Sequence
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


def plot_curves(records: Sequence[dict[str, Any]], path: str) -> None:
  """Loss, τ and the modality gap Δ against the step, for the train and eval splits."""
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for ax, key, label in zip(axes, ("loss", "tau", "gap"), ("CLIP loss", "temperature τ", "modality gap Δ")):
    for split, style in (("train", "-"), ("eval", "o-")):
      steps, values = _series(records, split, key)
      if len(steps):
        ax.plot(steps, values, style, ms=3, lw=1.2, label=split)
    ax.set_xlabel("step")
    ax.set_title(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def pca_2d(*sets: np.ndarray) -> list[np.ndarray]:
  """Projects every set onto the top two principal axes of their union."""
  union = np.concatenate(sets, axis=0).astype(np.float64)
  mean = union.mean(axis=0)
  _, _, vt = np.linalg.svd(union - mean, full_matrices=False)
  return [(s - mean) @ vt[:2].T for s in sets]


def plot_embedding_pca(
  image_emb: np.ndarray, text_emb: np.ndarray, path: str, *, max_pairs: int = 300, title: str = "", seed: int = 0
) -> None:
  """Figure 1 style: PCA of paired image (red) and text (blue) embeddings, pairs joined."""
  n = len(image_emb)
  keep = np.random.default_rng(seed).choice(n, size=min(n, max_pairs), replace=False)
  img2d, txt2d = pca_2d(image_emb[keep], text_emb[keep])
  fig, ax = plt.subplots(figsize=(5.2, 5.2))
  for a, b in zip(img2d, txt2d):
    ax.plot([a[0], b[0]], [a[1], b[1]], color="0.6", lw=0.4, alpha=0.6, zorder=1)
  ax.scatter(img2d[:, 0], img2d[:, 1], s=9, color=IMAGE_COLOR, label="image", zorder=2)
  ax.scatter(txt2d[:, 0], txt2d[:, 1], s=9, color=TEXT_COLOR, label="text", zorder=2)
  ax.set_xlabel("PC 1")
  ax.set_ylabel("PC 2")
  ax.set_title(title or "image and text embeddings (PCA)")
  ax.legend(fontsize=8)
  ax.set_aspect("equal", adjustable="datalim")
  fig.tight_layout()
  _save(fig, path)


def _save(fig, path: str) -> None:
  run_io.save_figure(fig, path, dpi=110, format="png")
