"""Measure the modality gap of any embeddings: ``analyze(image_emb, text_emb, ...) -> dict``.

Inputs are image rows X [N, d] and caption rows Y [M, d] from any model. Caption j belongs to
image ``text_to_image[j]`` (identity when None, then M = N). Every row is L2-normalised here
first; the result records the input norms and says whether they varied.

Two pairings are used, each where it is the paper's (MATH.md §1–2) or the literature's object:

- *caption pairs* (image ``text_to_image[j]``, caption j), j < M: the gap Δ, alignment, g, the
  parallel-model fit and the shifted gaps, exactly as ``modgap_jax.evaluation`` computes them
  on a training run's eval split (an image counts once per caption);
- *one-to-one pairs* (image i, its first caption), over the images that have one: the CLIP
  loss of MATH.md §1 with the whole set as one batch, and the image-vs-text separability probe,
  where a repeated image would be a duplicated logit row or a train/test leak.

What ``analyze`` returns (Python floats, ints, lists and None, ready for JSON):

- MATH.md §2 metrics, by ``modgap_jax.metrics``: ``gap``, ``gap_512``, ``alignment``,
  ``uniformity_{w2,wi}_{image,text,union}`` (union: the N images and M captions stacked),
  ``i2t_r{1,5,10}``, ``t2i_r{1,5,10}``, ``zeroshot_top1``, ``linear_probe_top1`` (None when
  their inputs are absent), and ``loss`` (the CLIP loss at ``beta``).
- The cone effect (Liang et al., 2022): ``cone_image`` = mean_{i≠j} cos(x_i, x_j),
  ``cone_text`` likewise over captions, ``cross_cosine`` = mean_{i,j} cos(x_i, y_j) over all
  N·M image–caption combinations, ``paired_cosine`` = mean_j cos(x_{t(j)}, y_j); histograms
  of the first three and of the paired cosines in ``cosine_hist``.
- Where the gap lives (Schrodi et al., 2025): with g = mean_j x_{t(j)} − mean_j y_j in the
  input coordinates, ``gap_share[k]`` = g_k² / ‖g‖², ``gap_dims_50``/``gap_dims_90`` = the
  fewest coordinates whose shares sum to ≥ 50 % / 90 %, and ``gap_removed_{50,90}``: the
  recalls after zeroing those coordinates in every row and re-normalising.
- Separability: ``modality_separability`` (held-out accuracy of a linear image-vs-text
  classifier), ``effective_rank_{image,text}`` = exp(−Σ_k p_k log p_k), p = σ / Σσ over the
  singular values σ of the unit-row matrix (Roy & Vetterli, 2007).
- The gap-shift experiment (Liang et al., 2022): images x → normalise(x − λg/2), captions
  y → normalise(y + λg/2) (class prompts too), for λ on a grid over [−1, 1] by default;
  ``shift`` holds per-λ lists, ``shift_best_lambda`` minimises the loss.
- The parallel-model reading of MATH.md §3.1 (``parallel_*``): γ fitted to the offset along ĝ.

Nothing here builds an [N, M] similarity matrix: retrieval, the loss and the histograms work in
``chunk_size``-row blocks, the cone means use the closed form of the sum of a Gram matrix.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from modgap_jax import errors, evaluation, metrics, numerics
from modgap_jax.metrics import chunk_rows, dot_t, promote_float

_normalize = numerics.l2_normalize

RECALL_KS = (1, 5, 10)
# Relative spread of the input row norms above which the result reports them as varied.
NORM_TOLERANCE = 1e-4
# Keys of the headline table of compare mode, in order.
COMPARE_KEYS = (
  "gap",
  "gap_512",
  "alignment",
  "loss",
  "uniformity_w2_union",
  "uniformity_wi_union",
  "i2t_r1",
  "t2i_r1",
  "zeroshot_top1",
  "linear_probe_top1",
  "cone_image",
  "cone_text",
  "cross_cosine",
  "paired_cosine",
  "gap_dims_50",
  "gap_dims_90",
  "modality_separability",
  "effective_rank_image",
  "effective_rank_text",
  "shift_best_lambda",
  "shift_best_loss",
  "parallel_gamma",
  "parallel_r2",
)


# ----------------------------------------------------------------------------------------
# Jitted, chunked kernels.
# ----------------------------------------------------------------------------------------


def _direction_nll_sum(queries: jax.Array, keys: jax.Array, beta, chunk_size: int) -> jax.Array:
  """Σ_i [logsumexp_j(β⟨q_i, k_j⟩) − β⟨q_i, k_i⟩] over the n rows of ``queries``, by blocks."""
  n = queries.shape[0]
  block = min(chunk_size, n)
  ids = chunk_rows(jnp.arange(n), block, -1)

  def block_nll(args):
    rows, row_ids = args
    logits = beta * dot_t(rows, keys)  # [block, n]: the only large buffer
    # The positive is read from the matrix its row's logsumexp runs over (same rounding).
    positive = jnp.take_along_axis(logits, jnp.maximum(row_ids, 0)[:, None], axis=1)[:, 0]
    nll = jax.nn.logsumexp(logits, axis=1) - positive
    return jnp.where(row_ids >= 0, nll, 0.0)  # padding rows add nothing

  return jnp.sum(lax.map(block_nll, (chunk_rows(queries, block, 0.0), ids)))


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def clip_loss_chunked(image_emb, text_emb, beta, *, chunk_size: int = 1024) -> jax.Array:
  """The CLIP loss of MATH.md §1 with all n pairs as one batch, in ``chunk_size``-row blocks.

  L = (1/2n) Σ_i [−log softmax_j(Z_i·)_i − log softmax_j(Z_·i)_i], Z = β H_X H_Yᵀ. The same
  value as ``losses.clip_loss`` on the whole set, without the [n, n] logit matrix.
  """
  x, y = promote_float(image_emb), promote_float(text_emb)
  beta = jnp.asarray(beta, x.dtype)
  n = x.shape[0]
  return 0.5 * (_direction_nll_sum(x, y, beta, chunk_size) + _direction_nll_sum(y, x, beta, chunk_size)) / n


def shift_along_gap(image_emb, text_emb, gap_vec, lam):
  """Images x → normalise(x − λg/2), texts y → normalise(y + λg/2) (Liang et al.'s shift).

  λ = 1 moves both centroids (before re-normalisation) to their midpoint; λ = 0 leaves the
  unit rows as they are.
  """
  half = 0.5 * lam * promote_float(gap_vec)
  return _normalize(promote_float(image_emb) - half), _normalize(promote_float(text_emb) + half)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _shifted_loss(image_emb, text_emb, gap_vec, lam, beta, *, chunk_size: int) -> jax.Array:
  x, y = shift_along_gap(image_emb, text_emb, gap_vec, lam)
  return clip_loss_chunked(x, y, beta, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("bins", "chunk_size", "exclude_self"))
def _histogram_blocks(rows, columns, *, bins: int, chunk_size: int, exclude_self: bool) -> jax.Array:
  """[num_blocks, bins] int32 counts of ⟨r_i, c_j⟩ in ``bins`` equal bins over [−1, 1]."""
  n, m = rows.shape[0], columns.shape[0]
  block = min(chunk_size, n)
  ids = chunk_rows(jnp.arange(n), block, -1)

  def block_counts(args):
    r, row_ids = args
    sim = dot_t(r, columns)
    # Bin k holds [−1 + 2k/bins, −1 + 2(k+1)/bins); 1.0 (and rounding above it) goes in the last.
    k = jnp.clip(jnp.floor((sim + 1.0) * (bins / 2.0)), 0, bins - 1).astype(jnp.int32)
    keep = jnp.broadcast_to((row_ids >= 0)[:, None], (r.shape[0], m))
    if exclude_self:
      keep &= row_ids[:, None] != jnp.arange(m)[None, :]
    # One block holds at most chunk_size · m < 2³¹ counts; blocks are summed on the host.
    return jnp.zeros(bins, jnp.int32).at[k.reshape(-1)].add(keep.reshape(-1).astype(jnp.int32))

  return lax.map(block_counts, (chunk_rows(promote_float(rows), block, 0.0), ids))


def cosine_histogram(
  rows, columns, *, bins: int = 100, chunk_size: int = 1024, exclude_self: bool = False
) -> np.ndarray:
  """int64 [bins] counts of the cosines ⟨r_i, c_j⟩ of unit rows over [−1, 1].

  ``exclude_self`` drops the pairs i = j (for a set against itself: distinct pairs only).
  """
  counts = _histogram_blocks(rows, columns, bins=bins, chunk_size=chunk_size, exclude_self=exclude_self)
  return np.asarray(counts).astype(np.int64).sum(axis=0)


# ----------------------------------------------------------------------------------------
# Closed forms on the host (float64).
# ----------------------------------------------------------------------------------------


def mean_distinct_cosine(emb: np.ndarray) -> float:
  """mean_{i≠j} ⟨x_i, x_j⟩ = (‖Σ_i x_i‖² − Σ_i ‖x_i‖²) / (n(n−1)): the Gram sum, no Gram matrix."""
  x = np.asarray(emb, np.float64)
  n = x.shape[0]
  if n < 2:
    return float("nan")
  total = x.sum(axis=0)
  return float((total @ total - np.sum(x * x)) / (n * (n - 1.0)))


def effective_rank(emb: np.ndarray) -> float:
  """exp(H(p)), p_k = σ_k / Σ σ, over the singular values σ of the [n, d] matrix (Roy & Vetterli).

  σ² are the eigenvalues of the d×d (or n×n, whichever is smaller) Gram matrix, formed in
  float64: in float32 the rounding of near-zero eigenvalues, after the square root, would add
  spurious entropy. Eigenvalues below the Gram's rounding level (10 · size · eps · λ_max) are
  zero singular values and count as such.
  """
  x = np.asarray(emb, np.float64)
  gram = x.T @ x if x.shape[1] <= x.shape[0] else x @ x.T
  eigvals = np.linalg.eigvalsh(gram)
  floor = 10.0 * gram.shape[0] * np.finfo(np.float64).eps * max(eigvals.max(), 0.0)
  sigma = np.sqrt(np.where(eigvals > floor, eigvals, 0.0))
  if sigma.sum() <= 0:
    return float("nan")
  p = sigma / sigma.sum()
  p = p[p > 0]  # 0 log 0 = 0
  return float(np.exp(-np.sum(p * np.log(p))))


def gap_spectrum(gap_vec: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
  """(shares g_k²/‖g‖², coordinates by decreasing share, dims for 50 %, dims for 90 %)."""
  g = np.asarray(gap_vec, np.float64)
  total = float(g @ g)
  if total <= 0:
    return np.zeros_like(g), np.arange(g.size), 0, 0
  share = g * g / total
  order = np.argsort(-share, kind="stable")
  cumulative = np.cumsum(share[order])
  # Fewest k with Σ_{top k} ≥ q; the tolerance absorbs the last bit of float64 rounding at q.
  dims = [int(np.searchsorted(cumulative, q - 1e-12) + 1) for q in (0.5, 0.9)]
  return share, order, min(dims[0], g.size), min(dims[1], g.size)


def parallel_fit(image_proj: np.ndarray, text_proj: np.ndarray, beta: float) -> dict[str, float]:
  """γ of MATH.md §3.1's parallel model fitted along the unit gap direction ĝ.

  The model puts ⟨h^x, e⟩ = +γ and ⟨h^y, e⟩ = −γ. With a = ⟨x_{t(j)}, ĝ⟩, b = ⟨y_j, ĝ⟩ over
  the n caption pairs, least squares for a ≈ c + γ, b ≈ c − γ gives γ = (ā − b̄)/2 and
  c = (ā + b̄)/2 (c = 0 gives the same γ). Since ā − b̄ = ⟨g, ĝ⟩ = Δ, γ = Δ/2: along ĝ the
  bound Δ ≥ 2|γ| is tight, and Δ > 2γ_true means the modalities also differ off the axis.
  ``parallel_r2`` = 1 − SS_res/SS_tot of that fit over all 2n projections (1: every row sits
  at ±γ, as in the model); ``parallel_kappa`` = β(1 − γ²), the effective inverse temperature
  the loss sees under the model.
  """
  a, b = np.asarray(image_proj, np.float64), np.asarray(text_proj, np.float64)
  gamma, offset = (a.mean() - b.mean()) / 2.0, (a.mean() + b.mean()) / 2.0
  union = np.concatenate([a, b])
  ss_res = np.sum((a - offset - gamma) ** 2) + np.sum((b - offset + gamma) ** 2)
  ss_tot = np.sum((union - union.mean()) ** 2)
  return {
    "parallel_gamma": float(gamma),
    "parallel_offset": float(offset),
    "parallel_r2": float(1.0 - ss_res / ss_tot) if ss_tot > 0 else 1.0,
    "parallel_residual_rms": float(np.sqrt(ss_res / union.size)),
    "parallel_kappa": float(beta * (1.0 - gamma**2)),
  }


# ----------------------------------------------------------------------------------------
# Input checks.
# ----------------------------------------------------------------------------------------


def _check_matrix(name: str, x, rows: str, d: int | None) -> np.ndarray:
  x = np.asarray(x)
  want = f"[{rows}, {d if d is not None else 'd'}]"
  if x.ndim != 2 or x.shape[0] < 1 or (d is not None and x.shape[1] != d) or x.shape[1] < 1:
    raise errors.ConfigError(f"{name} must have shape {want}; got {x.shape}")
  if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
    raise errors.ConfigError(f"{name} must be a float array of shape {want}; got dtype {x.dtype}")
  return x


def _check_finite_nonzero(name: str, x: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(x.astype(np.float64).reshape(-1, x.shape[-1]), axis=-1)
  bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
  if bad.size:
    raise errors.ConfigError(f"{name} row {bad[0]} has norm {norms[bad[0]]}; every row must be finite and nonzero")
  return norms


def _check_indices(name: str, v, length: int, length_name: str, upper: int, upper_name: str) -> np.ndarray:
  v = np.asarray(v)
  if v.shape != (length,) or not (np.issubdtype(v.dtype, np.integer) or v.size == 0):
    raise errors.ConfigError(
      f"{name} must be an int array of shape [{length_name}] = ({length},); got shape {v.shape}, dtype {v.dtype}"
    )
  if v.size and (v.min() < 0 or v.max() >= upper):
    raise errors.ConfigError(f"{name} values must lie in [0, {upper_name}) = [0, {upper}); got [{v.min()}, {v.max()}]")
  return v.astype(np.int64)


def validate_inputs(image_emb, text_emb, text_to_image=None, labels=None, class_text_emb=None) -> dict[str, Any]:
  """Checks shapes, dtypes, finiteness and index ranges; returns NumPy arrays and the norms.

  Raises ConfigError with one line that names the argument and its expected shape.
  """
  x = _check_matrix("image_emb", image_emb, "N", None)
  n, d = x.shape
  y = _check_matrix("text_emb", text_emb, "M", d)
  m = y.shape[0]
  if text_to_image is None:
    if m != n:
      raise errors.ConfigError(f"text_to_image must have shape [M] = ({m},) when N={n} != M={m}; it is missing")
    t2i = np.arange(m)
  else:
    t2i = _check_indices("text_to_image", text_to_image, m, "M", n, "N")
  if labels is not None:
    labels = _check_indices("labels", labels, n, "N", np.iinfo(np.int64).max, "inf")
  if class_text_emb is not None:
    c = np.asarray(class_text_emb)
    if c.ndim not in (2, 3) or c.shape[-1] != d or c.shape[0] < 1:
      raise errors.ConfigError(f"class_text_emb must have shape [C, {d}] or [C, T, {d}]; got {c.shape}")
    if labels is None:
      raise errors.ConfigError(f"labels must have shape [N] = ({n},) when class_text_emb is given; it is missing")
    if labels.size and labels.max() >= c.shape[0]:
      raise errors.ConfigError(f"labels values must lie in [0, C) = [0, {c.shape[0]}); got max {labels.max()}")
    _check_finite_nonzero("class_text_emb", c)
    class_text_emb = c.astype(np.float32)
  norms_x = _check_finite_nonzero("image_emb", x)
  norms_y = _check_finite_nonzero("text_emb", y)
  if not np.bincount(t2i, minlength=n).any():
    raise errors.ConfigError("text_to_image leaves every image without a caption")
  return {
    "image": x.astype(np.float32),
    "text": y.astype(np.float32),
    "text_to_image": t2i,
    "labels": labels,
    "class_text_emb": class_text_emb,
    "norms_image": norms_x,
    "norms_text": norms_y,
  }


# (image index, caption index) of each image's first caption; shared with the trainer's eval loss.
one_to_one_pairs = evaluation.one_to_one_pairs


def _norm_summary(norms_image: np.ndarray, norms_text: np.ndarray) -> dict[str, Any]:
  out = {}
  varied = False
  for name, norms in (("image", norms_image), ("text", norms_text)):
    lo, hi = float(norms.min()), float(norms.max())
    out[f"input_norm_{name}_min"], out[f"input_norm_{name}_max"] = lo, hi
    varied |= (hi - lo) > NORM_TOLERANCE * hi
  out["norms_varied"] = bool(varied)
  out["inputs_unit_norm"] = bool(all(abs(v - 1.0) <= NORM_TOLERANCE for v in out.values() if isinstance(v, float)))
  return out


# ----------------------------------------------------------------------------------------
# The analysis.
# ----------------------------------------------------------------------------------------


def _split_halves(n: int, seed: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded random half/half split of range(n): (train, test); train gets the odd one out."""
  order = np.random.default_rng([seed, salt]).permutation(n)
  cut = (n + 1) // 2
  return np.sort(order[:cut]), np.sort(order[cut:])


def modality_separability(image_emb, text_emb, *, seed: int = 0, l2: float = 1e-3, steps: int = 300) -> float:
  """Held-out accuracy of a linear classifier that tells image rows (0) from text rows (1).

  Rows i of ``image_emb`` and ``text_emb`` are one pair; the pairs are split half/half at
  random (seeded), both members of a pair on the same side, so a test row's partner was never
  seen in training. The classifier is ``metrics.linear_probe_accuracy`` (standardised
  features, L-BFGS softmax regression with penalty (l2/2)‖W‖²). 1.0: the two modalities lie in
  linearly separable regions; 0.5: indistinguishable. None with fewer than 2 pairs.
  """
  n = len(image_emb)
  if n < 2:
    return None
  train, test = _split_halves(n, seed, salt=1)
  feats = lambda idx: np.concatenate([image_emb[idx], text_emb[idx]])
  target = lambda idx: np.concatenate([np.zeros(len(idx), np.int64), np.ones(len(idx), np.int64)])
  return metrics.linear_probe_accuracy(feats(train), target(train), feats(test), target(test), l2=l2, steps=steps)


def _probe_on_labels(image_emb, labels, *, seed: int, l2: float, steps: int) -> float | None:
  """Linear-probe top-1 (MATH.md §2): trained on a seeded random half of the images, tested on the rest."""
  if len(labels) < 2:
    return None
  train, test = _split_halves(len(labels), seed, salt=2)
  return metrics.linear_probe_accuracy(
    image_emb[train], labels[train], image_emb[test], labels[test], l2=l2, steps=steps
  )


def _zero_shot(image_emb, labels, class_text_emb) -> float:
  """``metrics.zero_shot_accuracy`` as the exact fraction hits/N (its float32 mean is not)."""
  return round(float(metrics.zero_shot_accuracy(image_emb, labels, class_text_emb)) * len(labels)) / len(labels)


def _subsample(n: int, max_rows: int, seed: int, salt: int) -> np.ndarray:
  """All of range(n) when max_rows ≤ 0 or n ≤ max_rows, else a seeded sorted sample."""
  if max_rows <= 0 or n <= max_rows:
    return np.arange(n)
  return np.sort(np.random.default_rng([seed, salt]).choice(n, size=max_rows, replace=False))


def _floats(d: Mapping[str, Any]) -> dict[str, Any]:
  return {k: (None if v is None else float(v)) for k, v in d.items()}


def shift_grid(num: int = 41, low: float = -1.0, high: float = 1.0) -> np.ndarray:
  """λ grid of ``num`` points over [low, high]; 0 and ±1 are on it for odd num over [−1, 1]."""
  if num < 2 or not low < high:
    raise errors.ConfigError(f"the shift grid needs num >= 2 and low < high; got num={num}, [{low}, {high}]")
  return np.linspace(low, high, num)


def analyze(
  image_emb,
  text_emb,
  *,
  text_to_image=None,
  labels=None,
  class_text_emb=None,
  beta: float = 100.0,
  lambdas: Sequence[float] | None = None,
  chunk_size: int = 1024,
  hist_bins: int = 100,
  hist_max_rows: int = 10000,
  gap_pairs: int = 512,
  probe_l2: float = 1e-3,
  probe_steps: int = 300,
  seed: int = 0,
  progress: Callable[[Sequence], Sequence] | None = None,
) -> dict[str, Any]:
  """Every measurement of the module docstring on one set of embeddings.

  Args:
    image_emb: [N, d] image embeddings (any norm; normalised here).
    text_emb: [M, d] caption embeddings.
    text_to_image: int [M], the image of each caption; None means caption i is image i's.
    labels: int [N] class of each image; enables the linear probe (and zero-shot with
      ``class_text_emb``).
    class_text_emb: [C, d] or [C, T, d] class prompt embeddings for zero-shot.
    beta: inverse temperature β of the CLIP loss.
    lambdas: the shift grid; default ``shift_grid()`` (41 points over [−1, 1]).
    chunk_size: query rows per block of every similarity computation.
    hist_bins: bins of the cosine histograms over [−1, 1].
    hist_max_rows: at most this many rows per modality (seeded sample) enter the histograms;
      ≤ 0 means all. The cone means themselves always use every row.
    gap_pairs: size of the seeded random sample of caption pairs for ``gap_512`` (MATH.md §2).
    probe_l2, probe_steps: the logistic probes' penalty and L-BFGS steps.
    seed: seeds every sample and train/test split.
    progress: wraps the λ loop (e.g. tqdm); None for none.

  Returns:
    A dict of plain Python values; see the module docstring for each key.
  """
  errors.check_range("beta", float(beta), 0.0, None, low_inclusive=False)
  if chunk_size < 1:
    raise errors.ConfigError(f"chunk_size={chunk_size} must be >= 1")
  if hist_bins < 1:
    raise errors.ConfigError(f"hist_bins={hist_bins} must be >= 1")
  lambdas = shift_grid() if lambdas is None else np.asarray(lambdas, np.float64)
  inputs = validate_inputs(image_emb, text_emb, text_to_image, labels, class_text_emb)
  t2i, labels, class_emb = inputs["text_to_image"], inputs["labels"], inputs["class_text_emb"]
  x = np.asarray(_normalize(jnp.asarray(inputs["image"])))
  y = np.asarray(_normalize(jnp.asarray(inputs["text"])))
  n, d = x.shape
  m = y.shape[0]
  paired_x = x[t2i]  # caption pairs
  pair_img, pair_txt = one_to_one_pairs(t2i, n)
  out: dict[str, Any] = {
    "n_images": n,
    "n_texts": m,
    "n_pairs_one_to_one": int(len(pair_img)),
    "dim": d,
    "beta": float(beta),
    "seed": int(seed),
  }
  out.update(_norm_summary(inputs["norms_image"], inputs["norms_text"]))

  # MATH.md §2 exactly as a training run's evaluation computes them; only the loss differs:
  # here the one-to-one pairs of the whole set are one batch.
  out.update(
    evaluation.embedding_metrics(
      x, y, t2i, beta=beta, loss_batch_size=None, gap_pairs=gap_pairs, seed=seed, chunk_size=chunk_size
    )
  )
  out["loss"] = float(clip_loss_chunked(x[pair_img], y[pair_txt], beta, chunk_size=chunk_size))
  out["zeroshot_top1"] = _zero_shot(x, labels, class_emb) if class_emb is not None else None
  out["linear_probe_top1"] = (
    _probe_on_labels(x, labels, seed=seed, l2=probe_l2, steps=probe_steps) if labels is not None else None
  )

  # The cone effect.
  out["cone_image"] = mean_distinct_cosine(x)
  out["cone_text"] = mean_distinct_cosine(y)
  out["cross_cosine"] = float(np.mean(x.astype(np.float64), 0) @ np.mean(y.astype(np.float64), 0))
  out["paired_cosine"] = float(np.mean(np.sum(paired_x.astype(np.float64) * y, axis=1)))
  hx = x[_subsample(n, hist_max_rows, seed, salt=3)]
  hy = y[_subsample(m, hist_max_rows, seed, salt=4)]
  hist = dict(bins=hist_bins, chunk_size=chunk_size)
  out["cosine_hist"] = {
    "edges": np.linspace(-1.0, 1.0, hist_bins + 1).tolist(),
    "image": cosine_histogram(hx, hx, exclude_self=True, **hist).tolist(),
    "text": cosine_histogram(hy, hy, exclude_self=True, **hist).tolist(),
    "cross": cosine_histogram(hx, hy, **hist).tolist(),
    "paired": np.histogram(np.clip(np.sum(paired_x * y, axis=1), -1, 1), bins=hist_bins, range=(-1.0, 1.0))[0].tolist(),
    "rows_image": int(len(hx)),
    "rows_text": int(len(hy)),
  }

  # Where the gap lives.
  g = np.asarray(metrics.gap_vector(paired_x, y), np.float64)
  share, order, dims50, dims90 = gap_spectrum(g)
  out["gap_share"] = share.tolist()
  out["gap_dims_order"] = order[: min(d, 64)].tolist()
  out["gap_dims_50"], out["gap_dims_90"] = dims50, dims90
  for q, k in (("50", dims50), ("90", dims90)):
    keep = np.ones(d, np.float32)
    keep[order[:k]] = 0.0
    xr, yr = np.asarray(_normalize(jnp.asarray(x * keep))), np.asarray(_normalize(jnp.asarray(y * keep)))
    removed = {"dims": int(k), "gap": float(metrics.modality_gap(xr[t2i], yr))}
    removed.update(metrics.retrieval_recall(xr, yr, RECALL_KS, t2i, chunk_size=chunk_size))
    out[f"gap_removed_{q}"] = removed

  # Separability.
  out["modality_separability"] = modality_separability(
    x[pair_img], y[pair_txt], seed=seed, l2=probe_l2, steps=probe_steps
  )
  out["effective_rank_image"] = effective_rank(x)
  out["effective_rank_text"] = effective_rank(y)

  # The gap-shift experiment.
  out["shift"] = gap_shift_curve(
    x, y, t2i, g, lambdas, beta=beta, labels=labels, class_text_emb=class_emb, chunk_size=chunk_size, progress=progress
  )
  best = int(np.argmin(out["shift"]["loss"]))
  out["shift_best_lambda"] = out["shift"]["lambda"][best]
  out["shift_best_loss"] = out["shift"]["loss"][best]

  # MATH.md §3.1.
  norm_g = float(np.linalg.norm(g))
  axis = g / norm_g if norm_g > 0 else np.zeros_like(g)
  out.update(parallel_fit(paired_x @ axis, y @ axis, beta))
  out["parallel_bound_holds"] = bool(out["gap"] + 1e-6 >= 2 * abs(out["parallel_gamma"]))
  return out


def gap_shift_curve(
  x: np.ndarray,
  y: np.ndarray,
  text_to_image: np.ndarray,
  gap_vec: np.ndarray,
  lambdas: Sequence[float],
  *,
  beta: float,
  labels=None,
  class_text_emb=None,
  chunk_size: int = 1024,
  progress=None,
) -> dict[str, list]:
  """Per λ: CLIP loss (one-to-one pairs), R@1 both ways, Δ, and zero-shot top-1 if classes are given.

  Images, captions and class prompts move by ``shift_along_gap``: images by −λg/2, every text
  (captions and prompts, normalised first) by +λg/2, then all are re-normalised.
  """
  n = x.shape[0]
  pair_img, pair_txt = one_to_one_pairs(text_to_image, n)
  g = jnp.asarray(gap_vec, jnp.float32)
  xp, yp = jnp.asarray(x[pair_img]), jnp.asarray(y[pair_txt])
  curve = {"lambda": [float(v) for v in lambdas], "loss": [], "i2t_r1": [], "t2i_r1": [], "gap": []}
  if class_text_emb is not None:
    curve["zeroshot_top1"] = []
    prompts = _normalize(jnp.asarray(class_text_emb))
  wrap = progress or (lambda seq: seq)
  for lam in wrap(curve["lambda"]):
    lam32 = jnp.float32(lam)
    curve["loss"].append(float(_shifted_loss(xp, yp, g, lam32, beta, chunk_size=chunk_size)))
    xs, ys = (np.asarray(a) for a in shift_along_gap(x, y, g, lam32))
    recall = metrics.retrieval_recall(xs, ys, (1,), text_to_image, chunk_size=chunk_size)
    curve["i2t_r1"].append(recall["i2t_r1"])
    curve["t2i_r1"].append(recall["t2i_r1"])
    curve["gap"].append(float(metrics.modality_gap(xs[text_to_image], ys)))
    if class_text_emb is not None:
      shifted_prompts = _normalize(prompts + 0.5 * lam32 * g)
      curve["zeroshot_top1"].append(_zero_shot(xs, labels, shifted_prompts))
  return curve


# ----------------------------------------------------------------------------------------
# Compare mode.
# ----------------------------------------------------------------------------------------


def compare(results: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = COMPARE_KEYS) -> dict[str, Any]:
  """One row per key, one column per named result: ``{"names": [...], "rows": {key: [values]}}``.

  A key a result lacks (or holds None for) is None in its column.
  """
  names = list(results)
  rows = {k: [None if results[name].get(k) is None else results[name][k] for name in names] for k in keys}
  return {"names": names, "rows": rows}


def compare_markdown(table: Mapping[str, Any]) -> str:
  """The ``compare`` table as Markdown: metrics down, inputs across."""

  def cell(v):
    if v is None:
      return "n/a"
    if isinstance(v, (bool, np.bool_)):
      return str(bool(v))
    if isinstance(v, (int, np.integer)):
      return str(int(v))
    return f"{float(v):.4f}" if math.isfinite(float(v)) else "n/a"

  names = table["names"]
  lines = ["| metric | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
  lines += [f"| {key} | " + " | ".join(cell(v) for v in values) + " |" for key, values in table["rows"].items()]
  return "\n".join(lines) + "\n"
