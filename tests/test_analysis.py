"""Tests for modgap_jax.analysis and the analyze task, against independent float64 NumPy references.

Every reference below builds the full similarity matrices (the inputs are small) and follows
the formulas of the module docstrings, so a chunking, masking or pairing bug shows up as a
mismatch.
"""

import json
import os

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.special
from sklearn.linear_model import LogisticRegression

from configs import analyze as analyze_config
from modgap_jax import analysis, losses
from modgap_jax.errors import ConfigError
from modgap_jax.tasks import analyze as analyze_task
from modgap_jax.tasks import analyze_inputs

BETA = 30.0
LAMBDAS = np.linspace(-1.0, 1.0, 21)
L2 = 1e-3

# ----------------------------------------------------------------------------------------
# Data and float64 references.
# ----------------------------------------------------------------------------------------


def unit(a):
  a = np.asarray(a, np.float64)
  return a / np.linalg.norm(a, axis=-1, keepdims=True)


def make_data(seed=0, n=40, d=6, captions=2, classes=3):
  """Non-unit rows with a gap along coordinate 0, ``captions`` noisy captions per image."""
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(classes, d))
  labels = rng.integers(0, classes, n)
  x = centres[labels] + rng.normal(size=(n, d)) + 1.5 * np.eye(d)[0]
  t2i = np.repeat(np.arange(n), captions)
  y = x[t2i] + 0.6 * rng.normal(size=(n * captions, d)) - 1.5 * np.eye(d)[0]
  scale = rng.uniform(0.5, 3.0, size=(n, 1))  # varied norms
  class_emb = centres[:, None, :] + 0.3 * rng.normal(size=(classes, 2, d))  # [C, T, d]
  return dict(
    image_emb=(x * scale).astype(np.float32),
    text_emb=y.astype(np.float32),
    text_to_image=t2i,
    labels=labels,
    class_text_emb=class_emb.astype(np.float32),
  )


def ref_recalls(x, y, t2i, ks=(1, 5, 10)):
  s = x @ y.T
  out = {}
  i2t_rank = np.full(len(x), np.iinfo(np.int64).max)
  for i in range(len(x)):
    own = np.flatnonzero(t2i == i)
    if own.size:
      i2t_rank[i] = np.sum(s[i] > s[i, own].max())
  t2i_rank = np.array([np.sum(s[:, j] > s[t2i[j], j]) for j in range(len(y))])
  for k in ks:
    out[f"i2t_r{k}"], out[f"t2i_r{k}"] = np.mean(i2t_rank < k), np.mean(t2i_rank < k)
  return out


def ref_first_pairs(t2i, n):
  images, texts = [], []
  for i in range(n):
    own = np.flatnonzero(t2i == i)
    if own.size:
      images.append(i)
      texts.append(own[0])
  return np.array(images), np.array(texts)


def ref_clip_loss(x, y, beta):
  z = beta * x @ y.T
  diag = np.diag(z)
  return 0.5 * (np.mean(scipy.special.logsumexp(z, axis=1) - diag) + np.mean(scipy.special.logsumexp(z, axis=0) - diag))


def ref_uniformity_w2(x):
  d = x.shape[1]
  mu = x.mean(0)
  cov = np.cov(x, rowvar=False, bias=True)
  tr_sqrt = np.trace(scipy.linalg.sqrtm(cov)).real
  return -np.sqrt(max(mu @ mu + 1 + np.trace(cov) - 2 / np.sqrt(d) * tr_sqrt, 0.0))


def ref_uniformity_wi(x):
  return np.log(np.mean(np.exp(-2.0 * scipy.spatial.distance.pdist(x, "sqeuclidean"))))


def ref_zero_shot(x, labels, class_emb):
  w = unit(class_emb)
  if w.ndim == 3:
    w = unit(w.mean(axis=1))
  return np.mean(np.argmax(x @ w.T, axis=1) == labels)


def ref_histogram(s, bins):
  k = np.clip(np.floor((s + 1.0) * bins / 2.0), 0, bins - 1).astype(int)
  return np.bincount(k.ravel(), minlength=bins)


def ref_near_edges(s, bins, tol=1e-5):
  edges = np.linspace(-1, 1, bins + 1)
  return int(np.sum(np.min(np.abs(s.ravel()[:, None] - edges[None, :]), axis=1) < tol))


def ref_effective_rank(x):
  sigma = np.linalg.svd(x, compute_uv=False)
  p = sigma / sigma.sum()
  p = p[p > 0]
  return np.exp(-np.sum(p * np.log(p)))


def ref_halves(n, seed, salt):
  order = np.random.default_rng([seed, salt]).permutation(n)
  cut = (n + 1) // 2
  return np.sort(order[:cut]), np.sort(order[cut:])


def ref_probe(train_x, train_y, test_x, test_y, l2):
  mean, std = train_x.mean(0), train_x.std(0)
  std = np.where(std > 1e-12, std, 1.0)
  clf = LogisticRegression(C=1.0 / (len(train_x) * l2), max_iter=10000, tol=1e-10)
  clf.fit((train_x - mean) / std, train_y)
  return np.mean(clf.predict((test_x - mean) / std) == test_y)


def ref_shift(x, y, t2i, g, lam, beta, labels, class_emb):
  xs, ys = unit(x - lam * g / 2), unit(y + lam * g / 2)
  pi, pt = ref_first_pairs(t2i, len(x))
  rec = ref_recalls(xs, ys, t2i, ks=(1,))
  prompts = unit(unit(class_emb) + lam * g / 2)
  return {
    "loss": ref_clip_loss(xs[pi], ys[pt], beta),
    "i2t_r1": rec["i2t_r1"],
    "t2i_r1": rec["t2i_r1"],
    "gap": np.linalg.norm(xs[t2i].mean(0) - ys.mean(0)),
    "zeroshot_top1": ref_zero_shot(xs, labels, prompts),
  }


def run_analyze(data, **kwargs):
  kwargs = {**dict(beta=BETA, lambdas=LAMBDAS, probe_l2=L2, probe_steps=500), **kwargs}
  return analysis.analyze(
    data["image_emb"],
    data["text_emb"],
    text_to_image=data.get("text_to_image"),
    labels=data.get("labels"),
    class_text_emb=data.get("class_text_emb"),
    **kwargs,
  )


@pytest.fixture(scope="module")
def data():
  return make_data()


@pytest.fixture(scope="module")
def result(data):
  return run_analyze(data, chunk_size=16, hist_bins=40)


# ----------------------------------------------------------------------------------------
# analyze() against the references.
# ----------------------------------------------------------------------------------------


def test_spec_metrics_match_reference(data, result):
  x, y, t2i = unit(data["image_emb"]), unit(data["text_emb"]), data["text_to_image"]
  xp = x[t2i]
  assert result["gap"] == pytest.approx(np.linalg.norm(xp.mean(0) - y.mean(0)), abs=1e-6)
  sample = np.random.default_rng(0).choice(len(y), size=min(512, len(y)), replace=False)
  assert result["gap_512"] == pytest.approx(np.linalg.norm(xp[sample].mean(0) - y[sample].mean(0)), abs=1e-6)
  assert result["alignment"] == pytest.approx(np.mean(np.sum((xp - y) ** 2, axis=1)), abs=1e-5)
  for name, emb in (("image", x), ("text", y), ("union", np.concatenate([x, y]))):
    assert result[f"uniformity_w2_{name}"] == pytest.approx(ref_uniformity_w2(emb), abs=2e-5), name
    assert result[f"uniformity_wi_{name}"] == pytest.approx(ref_uniformity_wi(emb), abs=2e-5), name
  for key, value in ref_recalls(x, y, t2i).items():
    assert result[key] == pytest.approx(value, abs=1e-12), key
  pi, pt = ref_first_pairs(t2i, len(x))
  assert result["loss"] == pytest.approx(ref_clip_loss(x[pi], y[pt], BETA), rel=1e-5)
  assert result["zeroshot_top1"] == pytest.approx(ref_zero_shot(x, data["labels"], data["class_text_emb"]))
  train, test = ref_halves(len(x), 0, salt=2)
  probe = ref_probe(x[train], data["labels"][train], x[test], data["labels"][test], L2)
  assert abs(result["linear_probe_top1"] - probe) <= 1.5 / len(test)  # at most one test image differs
  assert result["n_images"] == 40 and result["n_texts"] == 80 and result["dim"] == 6 and result["beta"] == BETA


def test_norm_report(data, result):
  assert result["norms_varied"] and not result["inputs_unit_norm"]
  norms = np.linalg.norm(data["image_emb"].astype(np.float64), axis=1)
  assert result["input_norm_image_min"] == pytest.approx(norms.min(), rel=1e-6)
  assert result["input_norm_image_max"] == pytest.approx(norms.max(), rel=1e-6)
  unit_data = dict(
    data, image_emb=unit(data["image_emb"]).astype(np.float32), text_emb=unit(data["text_emb"]).astype(np.float32)
  )
  again = run_analyze(unit_data, chunk_size=16, hist_bins=40)
  assert not again["norms_varied"] and again["inputs_unit_norm"]
  for key in ("gap", "loss", "i2t_r1", "cone_image", "shift_best_lambda", "uniformity_wi_union"):
    assert again[key] == pytest.approx(result[key], abs=1e-5), key  # normalising first changes nothing


def test_cone_and_histograms_match_reference(data, result):
  x, y, t2i = unit(data["image_emb"]), unit(data["text_emb"]), data["text_to_image"]
  sxx, syy, sxy = x @ x.T, y @ y.T, x @ y.T
  off = lambda s: s[~np.eye(len(s), dtype=bool)]
  assert result["cone_image"] == pytest.approx(off(sxx).mean(), abs=1e-6)
  assert result["cone_text"] == pytest.approx(off(syy).mean(), abs=1e-6)
  assert result["cross_cosine"] == pytest.approx(sxy.mean(), abs=1e-6)
  assert result["paired_cosine"] == pytest.approx(np.mean(np.sum(x[t2i] * y, axis=1)), abs=1e-6)
  hist = result["cosine_hist"]
  assert np.allclose(hist["edges"], np.linspace(-1, 1, 41))
  for key, s in (("image", off(sxx)), ("text", off(syy)), ("cross", sxy), ("paired", np.sum(x[t2i] * y, 1))):
    counts = np.asarray(hist[key])
    assert counts.sum() == s.size, key
    # float32 and float64 may bin a value lying on an edge differently, and only such a value.
    assert np.abs(counts - ref_histogram(s, 40)).sum() <= 2 * ref_near_edges(s, 40), key


def test_gap_location_matches_reference(data, result):
  x, y, t2i = unit(data["image_emb"]), unit(data["text_emb"]), data["text_to_image"]
  g = x[t2i].mean(0) - y.mean(0)
  share = g**2 / (g @ g)
  np.testing.assert_allclose(result["gap_share"], share, atol=1e-5)
  order = np.argsort(-share)
  cumulative = np.cumsum(share[order])
  for q, key in ((0.5, "50"), (0.9, "90")):
    k = int(np.argmax(cumulative >= q) + 1)
    assert result[f"gap_dims_{key}"] == k
    keep = np.ones(x.shape[1])
    keep[order[:k]] = 0
    xr, yr = unit(x * keep), unit(y * keep)
    removed = result[f"gap_removed_{key}"]
    assert removed["dims"] == k
    assert removed["gap"] == pytest.approx(np.linalg.norm(xr[t2i].mean(0) - yr.mean(0)), abs=1e-6)
    for name, value in ref_recalls(xr, yr, t2i).items():
      assert removed[name] == pytest.approx(value, abs=1e-12), (key, name)


def test_gap_spectrum_closed_forms():
  share, order, d50, d90 = analysis.gap_spectrum(np.array([0.0, 3.0, 4.0, 0.0]))
  np.testing.assert_allclose(share, [0, 0.36, 0.64, 0])
  assert list(order[:2]) == [2, 1] and (d50, d90) == (1, 2)
  # Equal shares: exactly 50 % needs half the coordinates, 90 % needs 9 of 10.
  assert analysis.gap_spectrum(np.ones(10))[2:] == (5, 9)
  assert analysis.gap_spectrum(np.zeros(3))[2:] == (0, 0)


def test_separability_and_effective_rank_match_reference(data, result):
  x, y, t2i = unit(data["image_emb"]), unit(data["text_emb"]), data["text_to_image"]
  assert result["effective_rank_image"] == pytest.approx(ref_effective_rank(x), rel=1e-5)
  assert result["effective_rank_text"] == pytest.approx(ref_effective_rank(y), rel=1e-5)
  pi, pt = ref_first_pairs(t2i, len(x))
  train, test = ref_halves(len(pi), 0, salt=1)
  feats = lambda idx: np.concatenate([x[pi[idx]], y[pt[idx]]])
  target = lambda idx: np.repeat([0, 1], len(idx))
  probe = ref_probe(feats(train), target(train), feats(test), target(test), L2)
  assert abs(result["modality_separability"] - probe) <= 1.5 / (2 * len(test))


def test_effective_rank_closed_form():
  # k orthonormal directions, each spanned by rows of equal total weight: k equal σ, erank k.
  q = np.linalg.qr(np.random.default_rng(1).normal(size=(8, 8)))[0]
  rows = np.repeat(q[:3], 4, axis=0)
  assert analysis.effective_rank(rows) == pytest.approx(3.0, rel=1e-9)
  assert analysis.effective_rank(np.array([[2.0, 0.0], [0.0, 1.0]])) == pytest.approx(
    np.exp(-(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))), rel=1e-12
  )


def test_shift_curve_matches_reference(data, result):
  x, y, t2i = unit(data["image_emb"]), unit(data["text_emb"]), data["text_to_image"]
  g = x[t2i].mean(0) - y.mean(0)
  shift = result["shift"]
  np.testing.assert_allclose(shift["lambda"], LAMBDAS)
  for i, lam in enumerate(LAMBDAS):
    ref = ref_shift(x, y, t2i, g, lam, BETA, data["labels"], data["class_text_emb"])
    assert shift["loss"][i] == pytest.approx(ref["loss"], rel=1e-5), lam
    assert shift["gap"][i] == pytest.approx(ref["gap"], abs=1e-6), lam
    for key in ("i2t_r1", "t2i_r1", "zeroshot_top1"):
      assert shift[key][i] == pytest.approx(ref[key], abs=1e-12), (lam, key)
  assert shift["loss"][10] == pytest.approx(result["loss"], rel=1e-6)  # λ = 0 is the input
  assert result["shift_best_lambda"] == LAMBDAS[int(np.argmin(shift["loss"]))]


def test_parallel_fit_matches_reference(data, result):
  x, y, t2i = unit(data["image_emb"]), unit(data["text_emb"]), data["text_to_image"]
  g = x[t2i].mean(0) - y.mean(0)
  e = g / np.linalg.norm(g)
  a, b = x[t2i] @ e, y @ e
  gamma, c = (a.mean() - b.mean()) / 2, (a.mean() + b.mean()) / 2
  union = np.concatenate([a, b])
  r2 = 1 - (np.sum((a - c - gamma) ** 2) + np.sum((b - c + gamma) ** 2)) / np.sum((union - union.mean()) ** 2)
  assert result["parallel_gamma"] == pytest.approx(gamma, abs=1e-6)
  assert result["parallel_gamma"] == pytest.approx(result["gap"] / 2, abs=1e-6)  # along ĝ the bound is tight
  assert result["parallel_offset"] == pytest.approx(c, abs=1e-6)
  assert result["parallel_r2"] == pytest.approx(r2, abs=1e-5)
  assert result["parallel_kappa"] == pytest.approx(BETA * (1 - gamma**2), rel=1e-6)
  assert result["parallel_bound_holds"]


# ----------------------------------------------------------------------------------------
# The gap shift on the parallel model of MATH.md §3.1, where the optimum is known.
# ----------------------------------------------------------------------------------------


def parallel_model(gamma, n=8, d=5, matched=True, seed=0):
  """h^x = (√(1−γ²) u, +γ), h^y = (√(1−γ²) v, −γ); v = u (matched) or a cyclic shift of u."""
  u = unit(np.random.default_rng(seed).normal(size=(n, d - 1)))
  v = u if matched else np.roll(u, 1, axis=0)
  r = np.sqrt(1 - gamma**2)
  x = np.concatenate([r * u, np.full((n, 1), gamma)], axis=1)
  y = np.concatenate([r * v, np.full((n, 1), -gamma)], axis=1)
  return x, y, u @ v.T


def shifted_gamma(gamma, lam):
  """γ' after the shift: g = 2γe when ū = v̄, so the offset becomes γ(1−λ), then re-normalised."""
  return gamma * (1 - lam) / np.sqrt(1 - gamma**2 + gamma**2 * (1 - lam) ** 2)


@pytest.mark.parametrize("matched", [True, False])
def test_shift_on_parallel_model_has_closed_form_optimum(matched):
  gamma, beta = 0.6, 10.0
  x, y, s = parallel_model(gamma, matched=matched)
  # Matched: a grid symmetric about λ = 1 (the optimum is interior); mismatched: [−1, 1].
  lambdas = np.linspace(-1.0, 3.0, 41) if matched else LAMBDAS
  r = analysis.analyze(x, y, beta=beta, lambdas=lambdas, hist_bins=10)
  for i, lam in enumerate(lambdas):
    gp = shifted_gamma(gamma, lam)
    # MATH.md §3.1: the loss is ℓ(κ S) with κ = β(1 − γ'²); the −γ'² term cancels in the softmaxes.
    kappa = beta * (1 - gp**2)
    assert r["shift"]["loss"][i] == pytest.approx(ref_clip_loss(np.eye(len(s)), s, kappa), rel=2e-5), lam
    assert r["shift"]["gap"][i] == pytest.approx(2 * abs(gp), abs=1e-6), lam
  # Matched pairs: ℓ decreases in κ, κ is largest at γ' = 0, i.e. λ = 1 (the curve is symmetric about it).
  # Mismatched: ℓ increases in κ, so the loss prefers the widest gap: the grid end farthest from 1.
  assert r["shift_best_lambda"] == pytest.approx(1.0 if matched else -1.0, abs=1e-12)
  if matched:
    np.testing.assert_allclose(r["shift"]["loss"][:20], r["shift"]["loss"][21:][::-1], rtol=1e-5)
  else:
    assert np.all(np.diff(r["shift"]["loss"]) > 0)  # the loss rises all the way to λ = 1
  assert r["parallel_gamma"] == pytest.approx(gamma, abs=1e-6)
  assert r["parallel_r2"] == pytest.approx(1.0, abs=1e-6) and r["parallel_offset"] == pytest.approx(0, abs=1e-6)
  assert r["gap"] == pytest.approx(2 * gamma, abs=1e-6)
  assert r["cross_cosine"] == pytest.approx((1 - gamma**2) * s.mean() - gamma**2, abs=1e-6)


# ----------------------------------------------------------------------------------------
# Invariances and chunking.
# ----------------------------------------------------------------------------------------

ROTATION_INVARIANT = (
  "gap",
  "gap_512",
  "alignment",
  "loss",
  *(f"uniformity_{kind}_{of}" for kind in ("w2", "wi") for of in ("image", "text", "union")),
  *(f"{direction}_r{k}" for direction in ("i2t", "t2i") for k in (1, 5, 10)),
  "zeroshot_top1",
  "cone_image",
  "cone_text",
  "cross_cosine",
  "paired_cosine",
  "effective_rank_image",
  "effective_rank_text",
  "shift_best_lambda",
  "parallel_gamma",
  "parallel_offset",
  "parallel_r2",
)


def test_rotation_invariance_and_coordinate_equivariance(data, result):
  d = data["image_emb"].shape[1]
  q = np.linalg.qr(np.random.default_rng(3).normal(size=(d, d)))[0]
  rotated = dict(
    data, image_emb=data["image_emb"] @ q, text_emb=data["text_emb"] @ q, class_text_emb=data["class_text_emb"] @ q
  )
  r = run_analyze(rotated, chunk_size=16, hist_bins=40)
  for key in ROTATION_INVARIANT:
    assert r[key] == pytest.approx(result[key], abs=2e-5), key
  for key in ("loss", "i2t_r1", "t2i_r1", "gap", "zeroshot_top1"):
    np.testing.assert_allclose(r["shift"][key], result["shift"][key], atol=2e-5, err_msg=key)
  # The per-coordinate quantities are not rotation invariant; a permutation of the coordinates
  # permutes the shares and keeps the counts.
  perm = np.random.default_rng(4).permutation(d)
  permuted = dict(
    data,
    image_emb=data["image_emb"][:, perm],
    text_emb=data["text_emb"][:, perm],
    class_text_emb=data["class_text_emb"][..., perm],
  )
  p = run_analyze(permuted, chunk_size=16, hist_bins=40)
  np.testing.assert_allclose(p["gap_share"], np.asarray(result["gap_share"])[perm], atol=1e-6)
  assert (p["gap_dims_50"], p["gap_dims_90"]) == (result["gap_dims_50"], result["gap_dims_90"])
  assert p["gap_removed_50"] == pytest.approx(result["gap_removed_50"], abs=1e-6)


def test_chunked_equals_unchunked(data, result):
  whole = run_analyze(data, chunk_size=4096, hist_bins=40)
  for key, value in result.items():
    if isinstance(value, float):
      assert whole[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    elif key in ("cosine_hist",):
      for name in ("image", "text", "cross", "paired"):
        assert np.abs(np.asarray(whole[key][name]) - value[name]).sum() <= 2, name
  for key in ("loss", "i2t_r1", "t2i_r1", "gap"):
    np.testing.assert_allclose(whole["shift"][key], result["shift"][key], rtol=1e-5, err_msg=key)


@pytest.mark.parametrize("chunk", [1, 3, 8, 64])
def test_chunked_loss_equals_clip_loss(chunk):
  rng = np.random.default_rng(chunk)
  x, y = unit(rng.normal(size=(11, 4))).astype(np.float32), unit(rng.normal(size=(11, 4))).astype(np.float32)
  value = float(analysis.clip_loss_chunked(x, y, 7.0, chunk_size=chunk))
  assert value == pytest.approx(ref_clip_loss(x.astype(np.float64), y.astype(np.float64), 7.0), rel=1e-6)
  assert value == pytest.approx(float(losses.clip_loss(x, y, 7.0)), rel=1e-6)
  h = analysis.cosine_histogram(x, x, bins=9, chunk_size=chunk, exclude_self=True)
  s = (x @ x.T).astype(np.float64)[~np.eye(11, dtype=bool)]
  assert h.sum() == 110 and np.abs(h - ref_histogram(s, 9)).sum() <= 2 * ref_near_edges(s, 9)


def test_one_to_one_pairs_and_histogram_sample():
  images, texts = analysis.one_to_one_pairs(np.array([2, 0, 2, 0, 3]), 5)
  assert images.tolist() == [0, 2, 3] and texts.tolist() == [1, 0, 4]
  rng = np.random.default_rng(5)
  x = unit(rng.normal(size=(30, 4))).astype(np.float32)
  r = analysis.analyze(x, x + 0.1, beta=5.0, hist_max_rows=12, hist_bins=8, lambdas=LAMBDAS)
  assert r["cosine_hist"]["rows_image"] == 12 and sum(r["cosine_hist"]["image"]) == 12 * 11
  assert sum(r["cosine_hist"]["cross"]) == 144
  assert r["cone_image"] == pytest.approx(analysis.mean_distinct_cosine(x), abs=1e-7)  # the means use all rows


# ----------------------------------------------------------------------------------------
# Bad input and the task end to end.
# ----------------------------------------------------------------------------------------


def task_config(embeddings, **overrides):
  config = analyze_config.get_config()
  config.embeddings = embeddings
  config.progress_bar = False
  config.beta = BETA
  config.shift.num = 21
  config.hist_bins = 20
  config.update(overrides)
  return config


BAD_FILES = [
  (dict(text_emb=np.ones((4, 3))), "has no key 'image_emb' (float [N, d])"),
  (dict(image_emb=np.ones((4, 3))), "has no key 'text_emb' (float [M, d])"),
  (dict(image_emb=np.ones(4), text_emb=np.ones((4, 3))), "image_emb must have shape [N, d]; got (4,)"),
  (dict(image_emb=np.ones((4, 3)), text_emb=np.ones((4, 2))), "text_emb must have shape [M, 3]; got (4, 2)"),
  (dict(image_emb=np.ones((4, 3)), text_emb=np.ones((5, 3))), "text_to_image must have shape [M] = (5,)"),
  (
    dict(image_emb=np.ones((4, 3)), text_emb=np.ones((5, 3)), text_to_image=np.arange(5)),
    "text_to_image values must lie in [0, N) = [0, 4); got [0, 4]",
  ),
  (
    dict(image_emb=np.ones((4, 3)), text_emb=np.ones((4, 3)), labels=np.zeros(3, int)),
    "labels must be an int array of shape [N] = (4,); got shape (3,)",
  ),
  (
    dict(image_emb=np.ones((4, 3)), text_emb=np.ones((4, 3)), labels=np.zeros(4, int), class_text_emb=np.ones((2, 4))),
    "class_text_emb must have shape [C, 3] or [C, T, 3]; got (2, 4)",
  ),
  (
    dict(image_emb=np.ones((4, 3)), text_emb=np.ones((4, 3)), class_text_emb=np.ones((2, 3))),
    "labels must have shape [N] = (4,) when class_text_emb is given",
  ),
  (
    dict(
      image_emb=np.ones((4, 3)), text_emb=np.ones((4, 3)), labels=np.array([0, 1, 2, 2]), class_text_emb=np.ones((2, 3))
    ),
    "labels values must lie in [0, C) = [0, 2)",
  ),
  (dict(image_emb=np.eye(4, 3), text_emb=np.ones((4, 3))), "image_emb row 3 has norm 0.0"),
  (dict(image_emb=np.ones((4, 3)), text_emb=np.full((4, 3), np.nan)), "text_emb row 0 has norm nan"),
]


@pytest.mark.parametrize("arrays,needle", BAD_FILES)
def test_bad_file_is_one_line_naming_key_and_shape(tmp_path, arrays, needle):
  path = str(tmp_path / "bad.npz")
  np.savez(path, **arrays)
  workdir = tmp_path / "w"
  with pytest.raises(ConfigError) as info:
    analyze_task.run(task_config(path), str(workdir))
  message = str(info.value)
  assert needle in message and path in message and "\n" not in message, message
  assert not workdir.exists()


@pytest.mark.parametrize(
  "name,contents,needle",
  [
    ("missing.npz", None, "no such file or directory"),
    ("notzip.npz", b"hello", "is not a readable .npz"),
    ("table.csv", b"1,2", "must be an .npz file"),
  ],
)
def test_bad_paths_and_options(tmp_path, name, contents, needle):
  path = tmp_path / name
  if contents is not None:
    path.write_bytes(contents)
  with pytest.raises(ConfigError, match=needle):
    analyze_task.run(task_config(str(path)), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_bad_options_and_second_bad_file_write_nothing(tmp_path):
  good = str(tmp_path / "good.npz")
  np.savez(good, image_emb=np.eye(4), text_emb=np.eye(4))
  for config, needle in (
    (task_config(""), "embeddings is empty"),
    (task_config(good, beta=0.0), "beta=0.0"),
    (task_config(good, chunk_size=0), "chunk_size=0"),
  ):
    with pytest.raises(ConfigError, match=needle):
      analyze_task.run(config, str(tmp_path / "w"))
  config = task_config(good)
  config.shift.num = 11
  with pytest.raises(ConfigError, match="shift.num=11"):
    analyze_task.run(config, str(tmp_path / "w"))
  # Compare mode checks every file before it writes anything.
  with pytest.raises(ConfigError, match="no such file"):
    analyze_task.run(task_config(f"{good},{tmp_path / 'nope.npz'}"), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_task_end_to_end_single_and_compare(tmp_path, data):
  a = str(tmp_path / "a" / "emb.npz")
  os.makedirs(os.path.dirname(a))
  np.savez(a, **data, note=np.zeros(1))
  x, y, _ = parallel_model(0.3, n=12, d=5)
  b_dir = tmp_path / "b"
  b_dir.mkdir()
  np.savez(b_dir / "embeddings.npz", image_emb=x, text_emb=y)

  out = analyze_task.run(task_config(a), str(tmp_path / "w1"))
  files = sorted(os.listdir(tmp_path / "w1"))
  assert files == sorted(["analysis.json", "report.md", *analyze_task.FIGURES])
  for name in analyze_task.FIGURES:
    assert os.path.getsize(tmp_path / "w1" / name) > 1000, name
  saved = json.load(open(tmp_path / "w1" / "analysis.json"))
  direct = run_analyze(data, chunk_size=1024, hist_bins=20, lambdas=np.linspace(-1, 1, 21), probe_steps=300)
  for key in (
    "gap",
    "loss",
    "i2t_r1",
    "cone_text",
    "shift_best_lambda",
    "parallel_gamma",
    "zeroshot_top1",
    "linear_probe_top1",
    "modality_separability",
    "gap_dims_90",
  ):
    assert saved[key] == pytest.approx(direct[key], abs=1e-6), key
  assert saved["shift"]["loss"] == pytest.approx(direct["shift"]["loss"], rel=1e-6)
  assert saved["ignored_keys"] == ["note"] and saved["source"] == a and out["gap"] == saved["gap"]
  report = open(tmp_path / "w1" / "report.md").read()
  assert "the norms varied" in report and "zero-shot" in report and f"{saved['gap']:.4f}" in report

  table = analyze_task.run(task_config(f"{a},{b_dir}"), str(tmp_path / "w2"))
  assert sorted(os.listdir(tmp_path / "w2")) == ["compare.json", "compare.md", "compare.png"]
  saved = json.load(open(tmp_path / "w2" / "compare.json"))
  assert saved["table"]["names"] == ["emb", "b"] and table["table"]["names"] == ["emb", "b"]
  gaps = saved["table"]["rows"]["gap"]
  assert gaps[0] == pytest.approx(direct["gap"], abs=1e-6) and gaps[1] == pytest.approx(0.6, abs=1e-6)
  assert saved["table"]["rows"]["zeroshot_top1"][1] is None
  assert saved["analyses"]["b"]["shift_best_lambda"] == pytest.approx(1.0)
  md = open(tmp_path / "w2" / "compare.md").read()
  assert "| gap | " in md and "`emb`" in md and "`b`" in md and "n/a" in md


def test_directory_inputs_are_recognised_or_refused(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ConfigError, match="without embeddings.npz and is not a modgap_jax run"):
    analyze_inputs.input_kind(str(empty))
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)
  for name in ("config.json", "tokenizer.json"):
    (run / name).write_text("{}")
  assert analyze_inputs.input_kind(str(run)) == "run"
  with pytest.raises(ConfigError, match="has no checkpoint under checkpoints/"):
    analyze_inputs.restore_variables(str(run))
  assert os.listdir(run / "checkpoints") == []  # reading a run writes nothing into it
  assert analyze_inputs.input_names(["x/a/emb.npz", "y/a/emb.npz", "z/b"]) == ["x/a/emb", "y/a/emb", "z/b"]


@pytest.mark.parametrize("dataset", ["digits_captions", "image_text_folder", "coco_raw"])
def test_a_trained_runs_directory_is_analysed_as_its_trainer_evaluated_it(tmp_path, digits_dir, colour_folder, dataset):
  """A run directory is set up as its trainer set it up (the file datasets' path included): the
  analysis embeds the same eval split with the same weights, so the MATH.md §2 metrics of the
  run's last evaluation come back, and the run directory is left as it was."""
  from modgap_jax import train
  from tests.test_data_files import _COCO_IMAGES, _NUM_CAPTIONS, _write_coco
  from tests.test_train import digits_config

  overrides = {"num_steps": 2, "eval_every": 2, "checkpoint_every": 2, "eval.linear_probe": False}
  if dataset == "digits_captions":
    overrides["dataset.data_dir"] = digits_dir
  elif dataset == "image_text_folder":
    overrides.update({"dataset.name": dataset, "dataset.path": colour_folder, "dataset.data_dir": str(tmp_path)})
  else:  # a COCO root of 4 training and 3 validation images
    _write_coco(tmp_path / "coco")
    overrides.update(
      {"dataset.name": dataset, "dataset.path": str(tmp_path / "coco"), "dataset.data_dir": str(tmp_path)}
    )
    overrides.update({"dataset.eval_split": "val", "dataset.store_size": 16, "batch_size": 4})
  run_dir = tmp_path / "run"
  final = train.train_and_evaluate(digits_config(**overrides), str(run_dir))
  before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

  out = analyze_task.run(task_config(str(run_dir)), str(tmp_path / "analysis"))
  assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
  assert out["run_beta"] == pytest.approx(final["beta"], rel=1e-6)
  for key in ("gap", "gap_512", "alignment", "uniformity_w2", "uniformity_wi", "zeroshot_top1"):
    # The analysis re-normalises the (unit) rows: float32 rounding apart, the same numbers.
    expected = None if final[key] is None or not np.isfinite(final[key]) else final[key]
    assert out[key] == (None if expected is None else pytest.approx(expected, abs=2e-5)), key
  # A recall may flip only where two scores tie to float32 rounding: at most one query each way.
  assert abs(out["i2t_r1"] - final["i2t_r1"]) <= 1 / out["n_images"] + 1e-12
  assert abs(out["t2i_r1"] - final["t2i_r1"]) <= 1 / out["n_texts"] + 1e-12
  if dataset == "coco_raw":
    val = [i for i, (folder, _) in _COCO_IMAGES.items() if folder == "val2017"]
    assert out["zeroshot_top1"] is None and out["n_images"] == len(val)
    assert out["n_texts"] == sum(_NUM_CAPTIONS[i] for i in val)
  else:
    assert out["zeroshot_top1"] is not None
