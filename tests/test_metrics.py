"""Tests for modgap_jax.metrics against float64 NumPy/SciPy references of MATH.md §2."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.special
from jax import lax
from sklearn.linear_model import LogisticRegression

from modgap_jax import errors, metrics

# ----------------------------------------------------------------------------------------
# Float64 references, written from the formulas of MATH.md §2.
# ----------------------------------------------------------------------------------------


def unit_rows(rng, n, d):
  x = rng.normal(size=(n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def ref_gap(x, y):
  return np.linalg.norm(x.mean(0) - y.mean(0))


def ref_uniformity_w2(x):
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  d = x.shape[1]
  mu = x.mean(0)
  cov = np.cov(x, rowvar=False, bias=True)  # population covariance, 1/n
  tr_sqrt = np.trace(scipy.linalg.sqrtm(cov)).real
  return -np.sqrt(max(mu @ mu + 1 + np.trace(cov) - 2 / np.sqrt(d) * tr_sqrt, 0.0))


def ref_uniformity_wi(x, t=2.0):
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  sq = scipy.spatial.distance.pdist(x, "sqeuclidean")  # each unordered pair i < j once
  return scipy.special.logsumexp(-t * sq) - np.log(len(sq))


def ref_alignment(x, y):
  return np.mean(np.sum((x - y) ** 2, axis=1))


def ref_recall_argsort(x, y, t2i, ks):
  """Brute force: sort every row of the full similarity matrix."""
  sim = x @ y.T
  by_image = np.argsort(-sim, axis=1, kind="stable")
  by_text = np.argsort(-sim.T, axis=1, kind="stable")
  out = {}
  for k in ks:
    out[f"i2t_r{k}"] = np.mean([np.any(t2i[by_image[i, :k]] == i) for i in range(len(x))])
    out[f"t2i_r{k}"] = np.mean([t2i[j] in by_text[j, :k] for j in range(len(y))])
  return out


def random_rotation(rng, d):
  q, r = np.linalg.qr(rng.normal(size=(d, d)))
  return q * np.sign(np.diag(r))


def parallel_modalities(rng, n, d, gamma):
  """MATH.md §3.1: h^x = (√(1−γ²) u, +γ), h^y = (√(1−γ²) v, −γ), u, v ⟂ the last axis."""
  u, v = unit_rows(rng, n, d - 1), unit_rows(rng, n, d - 1)
  s = np.sqrt(1 - gamma**2)
  hx = np.concatenate([s * u, np.full((n, 1), gamma)], axis=1)
  hy = np.concatenate([s * v, np.full((n, 1), -gamma)], axis=1)
  return hx, hy, u, v


# ----------------------------------------------------------------------------------------
# Gap, alignment, uniformity.
# ----------------------------------------------------------------------------------------


def test_gap_alignment_uniformity_match_references():
  rng = np.random.default_rng(0)
  x = unit_rows(rng, 200, 16)
  y = unit_rows(rng, 200, 16) + 0.5  # an offset, like a real modality gap
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  xf, yf = x.astype(np.float32), y.astype(np.float32)
  np.testing.assert_allclose(metrics.gap_vector(xf, yf), x.mean(0) - y.mean(0), atol=1e-6)
  np.testing.assert_allclose(float(metrics.modality_gap(xf, yf)), ref_gap(x, y), rtol=1e-5)
  np.testing.assert_allclose(float(metrics.alignment(xf, yf)), ref_alignment(x, y), rtol=1e-5)
  for emb in (x, y, np.concatenate([x, y])):
    np.testing.assert_allclose(float(metrics.uniformity_w2(emb.astype(np.float32))), ref_uniformity_w2(emb), atol=2e-5)
    np.testing.assert_allclose(
      float(metrics.uniformity_wang_isola(emb.astype(np.float32))), ref_uniformity_wi(emb), atol=2e-5
    )


def test_uniformity_w2_uses_the_small_gram_when_n_below_d():
  rng = np.random.default_rng(1)
  x = unit_rows(rng, 20, 64)  # n < d: the n×n eigenproblem path
  np.testing.assert_allclose(float(metrics.uniformity_w2(x.astype(np.float32))), ref_uniformity_w2(x), atol=2e-5)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_uniformity_wang_isola_blocks_and_temperature(chunk_size):
  rng = np.random.default_rng(2)
  x = unit_rows(rng, 50, 5)
  got = metrics.uniformity_wang_isola(x.astype(np.float32), t=3.0, chunk_size=chunk_size)
  np.testing.assert_allclose(float(got), ref_uniformity_wi(x, t=3.0), atol=1e-5)


def test_gap_is_zero_for_equal_sets_and_metrics_are_rotation_invariant():
  rng = np.random.default_rng(3)
  x, y = unit_rows(rng, 128, 12), unit_rows(rng, 128, 12)
  assert float(metrics.modality_gap(x, x)) == 0.0
  assert float(metrics.alignment(x, x)) == 0.0
  q = random_rotation(rng, 12)
  xr, yr = x @ q, y @ q
  pairs = [
    (metrics.modality_gap, 2),
    (metrics.alignment, 2),
    (metrics.uniformity_w2, 1),
    (metrics.uniformity_wang_isola, 1),
  ]
  for fn, arity in pairs:
    args, rotated = (x, y)[:arity], (xr, yr)[:arity]
    a = float(fn(*(np.float32(v) for v in args)))
    b = float(fn(*(np.float32(v) for v in rotated)))
    np.testing.assert_allclose(a, b, atol=2e-5, err_msg=fn.__name__)
  y_paired = x + 0.3 * rng.normal(size=x.shape)
  assert metrics.retrieval_recall(x, y_paired) == metrics.retrieval_recall(x @ q, y_paired @ q)


def test_gap_bound_and_identity_on_the_parallel_model():
  rng = np.random.default_rng(4)
  for gamma in rng.uniform(-1, 1, size=8):
    hx, hy, u, v = parallel_modalities(rng, 64, 10, gamma)
    gap = float(metrics.modality_gap(hx.astype(np.float32), hy.astype(np.float32)))
    # MATH.md §3.1: Δ² = (1−γ²)‖ū − v̄‖² + 4γ², hence Δ ≥ 2|γ|.
    expected_sq = (1 - gamma**2) * np.sum((u.mean(0) - v.mean(0)) ** 2) + 4 * gamma**2
    np.testing.assert_allclose(gap**2, expected_sq, rtol=1e-5, atol=1e-6)
    assert gap >= 2 * abs(gamma) - 1e-6


def test_uniformity_extremes():
  rng = np.random.default_rng(5)
  # Collapsed set: W2 = −√2 and WI = log 1 = 0.
  collapsed = np.tile(unit_rows(rng, 1, 32), (100, 1)).astype(np.float32)
  np.testing.assert_allclose(float(metrics.uniformity_w2(collapsed)), -np.sqrt(2), atol=1e-6)
  np.testing.assert_allclose(float(metrics.uniformity_wang_isola(collapsed)), 0.0, atol=1e-6)
  # Uniform on the sphere in high dimension: W2 → 0 (finite-sample bias only).
  uniform = unit_rows(rng, 4000, 64).astype(np.float32)
  w2 = float(metrics.uniformity_w2(uniform))
  assert -0.1 < w2 <= 0.0
  # Antipodal pair: ‖x₁ − x₂‖² = 4, so WI = −4t.
  pair = np.stack([collapsed[0], -collapsed[0]])
  np.testing.assert_allclose(float(metrics.uniformity_wang_isola(pair)), -8.0, atol=1e-5)
  # Regular simplex of d+1 points in R^d: ⟨x_i, x_j⟩ = −1/d, ‖x_i − x_j‖² = 2 + 2/d.
  d = 6
  simplex = np.eye(d + 1) - 1.0 / (d + 1)  # centred basis vectors span a d-dim subspace
  simplex /= np.linalg.norm(simplex, axis=1, keepdims=True)
  np.testing.assert_allclose(
    float(metrics.uniformity_wang_isola(simplex.astype(np.float32))), -2.0 * (2 + 2 / d), atol=1e-5
  )
  # Values stay inside the documented ranges.
  for emb in (collapsed, uniform, simplex):
    assert -np.sqrt(2) - 1e-6 <= float(metrics.uniformity_w2(emb.astype(np.float32))) <= 0.0
  with pytest.raises(errors.ConfigError):
    metrics.uniformity_wang_isola(collapsed[:1])


def test_geometry_metrics_collects_every_form():
  rng = np.random.default_rng(6)
  x, y = unit_rows(rng, 32, 8).astype(np.float32), unit_rows(rng, 32, 8).astype(np.float32)
  out = metrics.geometry_metrics(x, y)
  assert set(out) == {"gap", "alignment"} | {
    f"uniformity_{f}_{s}" for f in ("w2", "wi") for s in ("image", "text", "union")
  }
  np.testing.assert_allclose(
    float(out["uniformity_w2_union"]), ref_uniformity_w2(np.concatenate([x, y]).astype(np.float64)), atol=2e-5
  )


# ----------------------------------------------------------------------------------------
# Retrieval.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 37, 4096])
def test_recall_matches_argsort_with_several_captions_per_image(chunk_size):
  rng = np.random.default_rng(7)
  n_img, d = 150, 8
  x = rng.normal(size=(n_img, d))
  # 0 to 5 captions per image (so some images have none), in shuffled order.
  t2i = rng.permutation(np.repeat(np.arange(n_img), rng.integers(0, 6, size=n_img)))
  y = x[t2i] + 0.8 * rng.normal(size=(len(t2i), d))
  ks = (1, 5, 10)
  got = metrics.retrieval_recall(x.astype(np.float32), y.astype(np.float32), ks, t2i, chunk_size=chunk_size)
  want = ref_recall_argsort(x, y, t2i, ks)
  assert set(got) == set(want)
  for key in want:
    assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert 0.0 <= got[key] <= 1.0


def test_recall_one_caption_per_image_and_edge_cases():
  rng = np.random.default_rng(8)
  x = rng.normal(size=(90, 6))
  y = x + 0.7 * rng.normal(size=x.shape)
  ks = (1, 3, 200)
  got = metrics.retrieval_recall(x, y, ks, chunk_size=32)
  want = ref_recall_argsort(x, y, np.arange(90), ks)
  assert got == pytest.approx(want, abs=1e-12)
  assert got["i2t_r200"] == 1.0 and got["t2i_r200"] == 1.0
  xu = x / np.linalg.norm(x, axis=1, keepdims=True)
  assert metrics.retrieval_recall(xu, xu) == {f"{s}_r{k}": 1.0 for s in ("i2t", "t2i") for k in (1, 5, 10)}
  # Ties count in favour of the positive: every score equal ⇒ rank 0 everywhere.
  same = np.ones((10, 4), np.float32)
  assert metrics.retrieval_recall(same, same, (1,)) == {"i2t_r1": 1.0, "t2i_r1": 1.0}
  with pytest.raises(errors.ConfigError):
    metrics.retrieval_recall(x, y[:10])
  with pytest.raises(errors.ConfigError):
    metrics.retrieval_recall(x, y[:10], text_to_image=np.full(10, 90))


def test_recall_chunked_5k_matches_bruteforce_counts():
  """5000 × 5000 with padding (chunk 768 ∤ 5000), several captions per image.

  Grid-valued embeddings (multiples of 1/4) make every score exact in float32 and float64,
  so the reference can count strictly-greater scores, ties included, with no rounding.
  """
  rng = np.random.default_rng(9)
  n_img, d = 2500, 16
  x = rng.integers(-4, 5, size=(n_img, d)) / 4
  t2i = rng.permutation(np.repeat(np.arange(n_img), 2))
  y = np.clip(x[t2i] + rng.integers(-3, 4, size=(len(t2i), d)) / 4, -1, 1)
  ks = (1, 5, 10)
  sim = x @ y.T
  best_own = np.full(n_img, -np.inf)
  np.maximum.at(best_own, t2i, sim[t2i, np.arange(len(t2i))])
  i2t_rank = np.sum(sim > best_own[:, None], axis=1)
  t2i_rank = np.sum(sim.T > sim[t2i, np.arange(len(t2i))][:, None], axis=1)
  got = metrics.retrieval_recall(x.astype(np.float32), y.astype(np.float32), ks, t2i, chunk_size=768)
  for k in ks:
    assert got[f"i2t_r{k}"] == np.mean(i2t_rank < k)
    assert got[f"t2i_r{k}"] == np.mean(t2i_rank < k)


def test_smoke_recall_50k_by_50k_runs_quickly():
  """Smoke test: 50 000 × 50 000 at d = 16 runs in bounded memory and time (~10 s on 2 cores)."""
  rng = np.random.default_rng(10)
  x = rng.normal(size=(50_000, 16)).astype(np.float32)
  y = x + rng.normal(size=x.shape).astype(np.float32)
  start = time.perf_counter()
  out = metrics.retrieval_recall(x, y, chunk_size=2048)
  assert time.perf_counter() - start < 120
  assert all(0.0 < v < 1.0 for v in out.values())


# ----------------------------------------------------------------------------------------
# Several devices (conftest emulates 4 CPUs).
# ----------------------------------------------------------------------------------------


def test_gap_and_recall_agree_between_one_device_and_pmap():
  n_dev = jax.local_device_count()
  assert n_dev == 4
  rng = np.random.default_rng(11)
  x = unit_rows(rng, 64 * n_dev, 8).astype(np.float32)
  y = (x + 0.6 * rng.normal(size=x.shape)).astype(np.float32)
  single_gap = float(metrics.modality_gap(x, y))
  single_recall = metrics.retrieval_recall(x, y)
  shard = lambda a: a.reshape(n_dev, -1, a.shape[-1])

  # Inside pmap with axis_name: every device returns the global gap.
  global_gap = jax.pmap(lambda a, b: metrics.modality_gap(a, b, axis_name="i"), axis_name="i")(shard(x), shard(y))
  np.testing.assert_allclose(np.asarray(global_gap), single_gap, rtol=1e-6)
  # Without axis_name: each device's gap of its own rows.
  local_gap = jax.pmap(metrics.modality_gap)(shard(x), shard(y))
  np.testing.assert_allclose(np.asarray(local_gap), [ref_gap(a, b) for a, b in zip(shard(x), shard(y))], rtol=1e-5)

  # Embeddings gathered across devices inside pmap, then measured on the gathered copy.
  gathered = jax.pmap(
    lambda a, b: (lax.all_gather(a, "i", tiled=True), lax.all_gather(b, "i", tiled=True)), axis_name="i"
  )(shard(x), shard(y))
  gx, gy = gathered[0][0], gathered[1][0]
  np.testing.assert_allclose(float(metrics.modality_gap(gx, gy)), single_gap, rtol=1e-6)
  assert metrics.retrieval_recall(gx, gy) == single_recall

  # retrieval_recall itself inside pmap: with axis_name every device returns the global
  # recall; several captions per image index the gathered arrays.
  pmapped = jax.pmap(lambda a, b: metrics.retrieval_recall(a, b, axis_name="i"), axis_name="i")(shard(x), shard(y))
  for key, value in single_recall.items():
    np.testing.assert_allclose(np.asarray(pmapped[key]), np.full(n_dev, value), rtol=1e-6)
  caption_to_image = np.repeat(np.arange(len(x) // 2), 2)
  two_each = metrics.retrieval_recall(x[::2], y, text_to_image=caption_to_image)
  pmapped_two = jax.pmap(
    lambda a, b: metrics.retrieval_recall(a, b, text_to_image=caption_to_image, axis_name="i"), axis_name="i"
  )(shard(x[::2]), shard(y))
  for key, value in two_each.items():
    np.testing.assert_allclose(np.asarray(pmapped_two[key]), np.full(n_dev, value), rtol=1e-6)
  # Under jit alone it scores the arrays it is given.
  jitted = jax.jit(metrics.retrieval_recall)(x, y)
  assert {k: float(v) for k, v in jitted.items()} == pytest.approx(single_recall)

  # Sharded pmap outputs, reshaped to [N, d], and arrays committed to different devices.
  sharded_x = jax.pmap(lambda a: a)(shard(x)).reshape(x.shape)
  sharded_y = jax.pmap(lambda a: a)(shard(y)).reshape(y.shape)
  assert metrics.retrieval_recall(sharded_x, sharded_y) == single_recall
  devices = jax.local_devices()
  on_3 = jax.device_put(x, devices[3])
  on_1 = jax.device_put(y, devices[1])
  assert metrics.retrieval_recall(on_3, on_1) == single_recall
  np.testing.assert_allclose(float(metrics.modality_gap(on_3, jax.device_put(y, devices[3]))), single_gap, rtol=1e-6)


# ----------------------------------------------------------------------------------------
# Zero-shot and linear probe.
# ----------------------------------------------------------------------------------------


def test_zero_shot_matches_reference():
  rng = np.random.default_rng(12)
  c, t, d, n = 5, 3, 16, 300
  prompts = rng.normal(size=(c, t, d))
  labels = rng.integers(0, c, size=n)
  images = prompts[labels].mean(1) + 1.5 * rng.normal(size=(n, d))
  # Reference: normalise each template, average, re-normalise, nearest by cosine.
  w = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
  w = w.mean(1)
  w /= np.linalg.norm(w, axis=-1, keepdims=True)
  xi = images / np.linalg.norm(images, axis=1, keepdims=True)
  want = np.mean(np.argmax(xi @ w.T, axis=1) == labels)
  np.testing.assert_allclose(metrics.zero_shot_classifier(prompts.astype(np.float32)), w, atol=1e-6)
  got = float(metrics.zero_shot_accuracy(images.astype(np.float32), labels, prompts.astype(np.float32)))
  # The accuracy is a float32 mean of n booleans.
  assert got == pytest.approx(want, abs=1e-6) and 0.2 < got < 1.0
  # [C, d]: a single template per class is the same classifier as T = 1.
  got_2d = float(metrics.zero_shot_accuracy(images, labels, prompts[:, 0]))
  got_3d = float(metrics.zero_shot_accuracy(images, labels, prompts[:, :1]))
  assert got_2d == got_3d


def test_linear_probe_matches_sklearn():
  rng = np.random.default_rng(13)
  c, d, n_train, n_test = 4, 10, 400, 200
  means = 1.2 * rng.normal(size=(c, d))
  labels = rng.integers(0, c, size=n_train + n_test)
  feats = 3.0 + 2.0 * (means[labels] + rng.normal(size=(n_train + n_test, d)))
  tr, te = slice(0, n_train), slice(n_train, None)
  l2 = 1e-2

  acc = metrics.linear_probe_accuracy(feats[tr], labels[tr], feats[te], labels[te], l2=l2, steps=300)
  assert acc == metrics.linear_probe_accuracy(
    feats[tr], labels[tr], feats[te], labels[te], l2=l2, steps=300
  )  # deterministic

  # sklearn on the same standardised features, C = 1/(n·l2).
  mean, std = feats[tr].mean(0), feats[tr].std(0)
  ztr, zte = (feats[tr] - mean) / std, (feats[te] - mean) / std
  ref = LogisticRegression(C=1 / (n_train * l2), tol=1e-10, max_iter=10_000).fit(ztr, labels[tr])
  assert acc == pytest.approx(ref.score(zte, labels[te]), abs=1 / n_test + 1e-12)

  params = metrics.fit_softmax_regression(jnp.asarray(ztr, jnp.float32), labels[tr], c, l2, 300)
  w, b = np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)
  np.testing.assert_allclose(w.T, ref.coef_, atol=2e-3)
  # The bias is defined up to a shared constant (softmax shift); compare centred.
  np.testing.assert_allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=2e-3)
  probs = scipy.special.softmax(zte @ w + b, axis=1)
  np.testing.assert_allclose(probs, ref.predict_proba(zte), atol=1e-3)
  with pytest.raises(errors.ConfigError):
    metrics.linear_probe_accuracy(feats[tr], labels[tr], feats[te], labels[te], l2=0.0)
