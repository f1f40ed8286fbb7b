"""A grid of scenes with their captions, for the docs and for looking at a world."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def plot_scene_grid(
  images: np.ndarray, captions: Sequence[str], path: str, *, columns: int = 4, wrap: int = 30, title: str = ""
) -> None:
  """Saves images (uint8 [n, S, S, 3]) in a grid, each over its wrapped caption, as a PNG.

  Pixels are drawn as blocks (nearest neighbour), so what is shown is what the model sees.
  """
  images = np.asarray(images)
  if len(images) != len(captions):
    raise ValueError(f"{len(images)} images but {len(captions)} captions")
  rows = max(1, -(-len(images) // columns))
  fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.3 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, image, caption in zip(axes.flat, images, captions):
    ax.imshow(image, interpolation="nearest")
    text = "\n".join(textwrap.wrap(caption, wrap))
    ax.text(0.5, -0.04, text, transform=ax.transAxes, fontsize=8, ha="center", va="top")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_world_samples(
  world, path: str, *, seed: int = 0, split: str = "train", count: int = 16, columns: int = 4
) -> None:
  """Saves scenes 0..count-1 of a world's ``split`` (``data.scenes.SceneWorld``) with their captions."""
  from modgap_jax.data import scenes  # Here: plotting a loaded run needs no JAX programs.

  examples = scenes.make_examples(world, seed, split, count, batch=count)
  images, captions = examples.fetch(np.arange(count), world.image_size)
  plot_scene_grid(images, [caps[0] for caps in captions], path, columns=columns)
