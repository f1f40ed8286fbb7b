"""The figures' coordinates against closed forms and an eigendecomposition (float64 NumPy)."""

import numpy as np

from modgap_jax.plots import training


def _cones(n=200, d=16, gap=0.2, seed=0):
  rng = np.random.default_rng(seed)
  shift = np.zeros(d)
  shift[3] = gap / 2
  spread = rng.normal(size=(n, d)) * np.linspace(1.0, 0.1, d)  # wide spread along the first axes
  return spread + shift, spread * 0.9 - shift + rng.normal(scale=0.05, size=(n, d))


def test_gap_axis_separates_the_modalities_by_the_gap():
  image, text = _cones()
  img2d, txt2d = training.gap_axis_2d(image, text)
  gap = np.linalg.norm(image.mean(0) - text.mean(0))
  np.testing.assert_allclose(img2d[:, 0].mean() - txt2d[:, 0].mean(), gap, rtol=1e-10)


def test_gap_axis_y_is_the_top_axis_of_the_rest():
  image, text = _cones(seed=1)
  img2d, txt2d = training.gap_axis_2d(image, text)
  union = np.concatenate([image, text])
  u = image.mean(0) - text.mean(0)
  u /= np.linalg.norm(u)
  projector = np.eye(len(u)) - np.outer(u, u)
  centred = union - union.mean(0)
  cov = projector @ (centred.T @ centred) @ projector
  top = np.linalg.eigh(cov)[0][-1]
  y = np.concatenate([img2d[:, 1], txt2d[:, 1]])
  np.testing.assert_allclose(y @ y, top, rtol=1e-8)
  # y carries nothing of the gap direction: it is uncorrelated with x's gap-axis content.
  x = np.concatenate([img2d[:, 0], txt2d[:, 0]])
  np.testing.assert_allclose(x, centred @ u, rtol=1e-10, atol=1e-12)


def test_pca_panel_hides_a_gap_the_gap_axis_shows():
  """The reason for the second panel: with a wide spread, PC 1 ignores the gap direction."""
  image, text = _cones(gap=0.2)
  img_pca, txt_pca = training.pca_2d(image, text)
  img_gap, txt_gap = training.gap_axis_2d(image, text)
  pca_sep = abs(img_pca[:, 0].mean() - txt_pca[:, 0].mean())
  gap_sep = abs(img_gap[:, 0].mean() - txt_gap[:, 0].mean())
  assert pca_sep < 0.5 * gap_sep


def test_figure_is_written(tmp_path):
  image, text = _cones(n=50)
  path = tmp_path / "pca.png"
  training.plot_embedding_pca(image, text, str(path), title="smoke")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
