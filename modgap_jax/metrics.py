"""Embedding metrics of MATH.md §2: modality gap, uniformity, alignment, retrieval, zero-shot, probe.

Conventions:

- Rows are embeddings. Images H_X are [N_img, d], texts H_Y are [N_txt, d]; the trainer
  passes them L2-normalised (MATH.md §1). Similarity is the plain inner product ⟨h^x, h^y⟩, so
  for unit rows it is the cosine. Only the uniformities, whose definitions are stated on the
  sphere, and the zero-shot classifier re-normalise their inputs.
- Reductions accumulate in float32 or wider, and matrix products use
  ``Precision.HIGHEST``: on GPUs the default float32 matmul may run in TF32, which is too
  coarse for ranks and for eigenvalues near zero.
- The array functions are pure and jittable and return 0-d arrays (``float(...)`` works).
  ``retrieval_recall`` and ``linear_probe_accuracy`` are host-side drivers around jitted
  kernels and return Python floats.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from modgap_jax import errors, numerics

_HIGHEST = lax.Precision.HIGHEST


def promote_float(x) -> jax.Array:
  """x as an array in float32 or wider (float64 stays float64): the dtype reductions accumulate in."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


_normalize = numerics.l2_normalize


def dot_t(a: jax.Array, b: jax.Array) -> jax.Array:
  """a @ bᵀ at full precision."""
  return jnp.einsum("md,nd->mn", a, b, precision=_HIGHEST)


# ----------------------------------------------------------------------------------------
# Gap, alignment, uniformity.
# ----------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("axis_name",))
def gap_vector(image_emb, text_emb, *, axis_name: str | None = None) -> jax.Array:
  """Centroid difference mean_i h^x_i − mean_i h^y_i, a [d] vector (MATH.md §2).

  Args:
    image_emb: [N_img, d].
    text_emb: [N_txt, d]; N_txt may differ from N_img.
    axis_name: under ``pmap``/``shard_map``, the mapped axis over which the rows are
      sharded. The local centroids are then averaged with ``lax.pmean``, which is the
      global centroid because pmap shards have equal sizes.
  """
  mean_x = jnp.mean(promote_float(image_emb), axis=0)
  mean_y = jnp.mean(promote_float(text_emb), axis=0)
  if axis_name is not None:
    mean_x, mean_y = lax.pmean((mean_x, mean_y), axis_name)
  return mean_x - mean_y


@functools.partial(jax.jit, static_argnames=("axis_name",))
def modality_gap(image_emb, text_emb, *, axis_name: str | None = None) -> jax.Array:
  """Modality gap Δ = ‖mean_i h^x_i − mean_i h^y_i‖₂ (MATH.md §2).

  With ``axis_name`` set inside ``pmap``, every device returns the gap of the global
  (all-device) sets; without it, the gap of its local rows.
  """
  return jnp.linalg.norm(gap_vector(image_emb, text_emb, axis_name=axis_name))


@jax.jit
def alignment(image_emb, text_emb) -> jax.Array:
  """Alignment mean_i ‖h^x_i − h^y_i‖² over the n paired rows (MATH.md §2); lower is better."""
  diff = promote_float(image_emb) - promote_float(text_emb)
  return jnp.mean(jnp.sum(diff * diff, axis=-1))


def _covariance_eigenvalues(centered: jax.Array) -> jax.Array:
  """Eigenvalues of Σ = (1/n) XcᵀXc, clipped at 0; uses the smaller of the d×d, n×n Grams."""
  n, d = centered.shape
  # XcᵀXc and XcXcᵀ share their nonzero spectrum; a batch of 512 in d = 1024 needs only the
  # 512×512 eigenproblem.
  a, b = (centered.T, centered) if d <= n else (centered, centered.T)
  eigvals = jnp.linalg.eigvalsh(jnp.matmul(a, b, precision=_HIGHEST) / n)
  # Σ is positive semi-definite; rounding can leave tiny negative eigenvalues.
  return jnp.maximum(eigvals, 0.0)


@functools.partial(jax.jit, static_argnames=("normalize",))
def uniformity_w2(emb, *, normalize: bool = True) -> jax.Array:
  """Uniformity U_W2 = −sqrt(‖μ‖² + 1 + tr Σ − (2/√d) tr Σ^{1/2}) (MATH.md §2, Fang et al.).

  μ and Σ are the mean and the *population* covariance (1/n, not 1/(n−1)) of the rows:
  U_W2 is minus the 2-Wasserstein distance between N(μ, Σ) and N(0, I/d), the Gaussian
  approximation of the uniform sphere, and the empirical moments of the set are its
  population moments. tr Σ^{1/2} = Σ_k sqrt(λ_k(Σ)). Range [−√2, 0]: −√2 for a collapsed
  set, near 0 for uniform points in high dimension; higher is more uniform.

  Args:
    emb: [n, d].
    normalize: L2-normalise the rows first (idempotent on unit rows).
  """
  x = promote_float(emb)
  if normalize:
    x = _normalize(x)
  d = x.shape[-1]
  mu = jnp.mean(x, axis=0)
  centered = x - mu
  trace_cov = jnp.mean(jnp.sum(centered * centered, axis=-1))
  trace_sqrt_cov = jnp.sum(jnp.sqrt(_covariance_eigenvalues(centered)))
  w2_sq = jnp.sum(mu * mu) + 1.0 + trace_cov - 2.0 / math.sqrt(d) * trace_sqrt_cov
  return -jnp.sqrt(jnp.maximum(w2_sq, 0.0))


@functools.partial(jax.jit, static_argnames=("t", "chunk_size", "normalize"))
def uniformity_wang_isola(emb, t: float = 2.0, *, chunk_size: int = 1024, normalize: bool = True) -> jax.Array:
  """Uniformity U_WI = log mean_{i≠j} exp(−t ‖x_i − x_j‖²) (MATH.md §2, Wang & Isola).

  Computed block by block over ``chunk_size`` rows at a time (a [chunk_size, n] distance
  block, never [n, n]) and combined with logsumexp, so large n neither runs out of memory
  nor underflows. On the sphere it lies in [−4t, 0] (0 for a collapsed set, −4t for an
  antipodal pair) and is near −2t for uniform points in high dimension (−4 for t = 2, as in
  MATH.md §2); lower is more uniform.

  Args:
    emb: [n, d] with n ≥ 2.
    t: the kernel's scale.
    chunk_size: rows per block.
    normalize: L2-normalise the rows first (idempotent on unit rows).
  """
  x = promote_float(emb)
  if normalize:
    x = _normalize(x)
  n = x.shape[0]
  if n < 2:
    raise errors.ConfigError(f"uniformity_wang_isola needs at least 2 rows; got n={n}")
  block = min(chunk_size, n)
  num_blocks = numerics.ceil_div(n, block)
  sq_norms = jnp.sum(x * x, axis=-1)
  rows = jnp.pad(x, ((0, num_blocks * block - n), (0, 0))).reshape(num_blocks, block, -1)
  row_ids = jnp.arange(num_blocks * block).reshape(num_blocks, block)

  def block_lse(args):
    xb, ids = args
    sq_b = jnp.sum(xb * xb, axis=-1)
    # ‖a−b‖² = ‖a‖² + ‖b‖² − 2⟨a,b⟩, clipped: rounding must not make a distance negative.
    dist = jnp.maximum(sq_b[:, None] + sq_norms[None, :] - 2.0 * dot_t(xb, x), 0.0)
    keep = ids[:, None] != jnp.arange(n)[None, :]  # i ≠ j
    lse = jax.nn.logsumexp(jnp.where(keep, -t * dist, -jnp.inf), axis=-1)
    return jnp.where(ids < n, lse, -jnp.inf)  # padded rows contribute nothing

  per_row = lax.map(block_lse, (rows, row_ids))
  return jax.nn.logsumexp(per_row) - math.log(n * (n - 1.0))


def geometry_metrics(image_emb, text_emb) -> dict[str, jax.Array]:
  """Every batch-geometry metric of MATH.md §2 for n paired rows, in one dict.

  Keys: ``gap``, ``alignment``, and ``uniformity_w2_{image,text,union}``,
  ``uniformity_wi_{image,text,union}`` (union = both sets stacked).
  """
  union = jnp.concatenate([promote_float(image_emb), promote_float(text_emb)], axis=0)
  out = {"gap": modality_gap(image_emb, text_emb), "alignment": alignment(image_emb, text_emb)}
  for name, emb in (("image", image_emb), ("text", text_emb), ("union", union)):
    out[f"uniformity_w2_{name}"] = uniformity_w2(emb)
    out[f"uniformity_wi_{name}"] = uniformity_wang_isola(emb)
  return out


# ----------------------------------------------------------------------------------------
# Retrieval.
# ----------------------------------------------------------------------------------------


@jax.jit
def _image_to_text_ranks(image_chunks, own_captions, text_emb):
  """For each image, how many texts score strictly above its best-scoring own caption.

  image_chunks: [num_chunks, B, d]; own_captions: [num_chunks, B, M] caption indices of each
  image, −1 where an image has fewer than M captions (and for padding rows); text_emb:
  [N_txt, d].
  """

  def chunk_ranks(args):
    queries, own = args
    sim = dot_t(queries, text_emb)  # [B, N_txt], the only large buffer
    # The positives' scores are read from the same matrix they are ranked in, so rounding is
    # identical on both sides of the comparison and a positive never outranks itself.
    own_sim = jnp.take_along_axis(sim, jnp.maximum(own, 0), axis=-1)
    best_own = jnp.max(jnp.where(own >= 0, own_sim, -jnp.inf), axis=-1)
    rank = jnp.sum(sim > best_own[:, None], axis=-1, dtype=jnp.int32)
    # An image without captions, or a NaN score, must never count as a hit.
    return jnp.where(jnp.isfinite(best_own), rank, jnp.iinfo(jnp.int32).max)

  return lax.map(chunk_ranks, (image_chunks, own_captions)).reshape(-1)


@jax.jit
def _text_to_image_ranks(text_chunks, own_image, image_emb):
  """For each caption, how many images score strictly above its own image.

  text_chunks: [num_chunks, B, d]; own_image: [num_chunks, B] index of each caption's image
  (any valid index for padding rows); image_emb: [N_img, d].
  """

  def chunk_ranks(args):
    queries, own_ids = args
    sim = dot_t(queries, image_emb)  # [B, N_img]
    # As in i2t, the positive's score comes from the matrix it is ranked in.
    own_sim = jnp.take_along_axis(sim, own_ids[:, None], axis=-1)
    rank = jnp.sum(sim > own_sim, axis=-1, dtype=jnp.int32)
    return jnp.where(jnp.isfinite(own_sim[:, 0]), rank, jnp.iinfo(jnp.int32).max)

  return lax.map(chunk_ranks, (text_chunks, own_image)).reshape(-1)


def chunk_rows(x: jax.Array, chunk_size: int, fill) -> jax.Array:
  """Pads the leading axis to a multiple of chunk_size with ``fill`` and reshapes to [chunks, chunk, ...]
  (the blocks a ``lax.map`` walks, so that no [n, m] matrix is ever built)."""
  n = x.shape[0]
  num_chunks = max(1, numerics.ceil_div(n, chunk_size))
  pad = [(0, num_chunks * chunk_size - n)] + [(0, 0)] * (x.ndim - 1)
  return jnp.pad(x, pad, constant_values=fill).reshape(num_chunks, chunk_size, *x.shape[1:])


def _captions_per_image(text_to_image: np.ndarray, n_img: int) -> np.ndarray:
  """[N_img, M] table of each image's caption indices, padded with −1; M = most captions."""
  order = np.argsort(text_to_image, kind="stable")
  counts = np.bincount(text_to_image, minlength=n_img)
  table = np.full((n_img, max(int(counts.max(initial=0)), 1)), -1, np.int32)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  slot = np.arange(len(order)) - starts[text_to_image[order]]
  table[text_to_image[order], slot] = order
  return table


def _same_device(*arrays):
  """Places every array on one device, so the jitted kernels accept them.

  Inputs may be NumPy arrays, arrays committed to different devices, or arrays sharded over
  several devices (e.g. gathered from pmap). The target is the first input's device when it
  lives on exactly one, else the default device.
  """
  first = arrays[0]
  devices = first.devices() if isinstance(first, jax.Array) else set()
  target = next(iter(devices)) if len(devices) == 1 else jax.devices()[0]
  return [jax.device_put(a, target) for a in arrays]


def retrieval_recall(
  image_emb,
  text_emb,
  ks: Sequence[int] = (1, 5, 10),
  text_to_image=None,
  *,
  chunk_size: int = 1024,
  axis_name: str | None = None,
) -> dict[str, float]:
  """Recall@K in both directions (MATH.md §2), without building the [N_img, N_txt] matrix.

  Image → text: an image hits at K if *any* of its captions is among its top-K texts.
  Text → image: a caption hits at K if its image is among its top-K images. Both are
  computed from ranks, one per query, in ``chunk_size``-row blocks of the similarity matrix:

  - i2t rank = #{texts with score > the best score among the image's own captions};
  - t2i rank = #{images with score > the caption's own-image score};
  - hit@K ⇔ rank < K.

  Ties: only *strictly* higher scores push a positive down, so a tie resolves in favour of
  the positive (the optimistic convention; with continuous features ties have probability
  0). An image with no caption, or a non-finite positive score, is always a miss.

  Args:
    image_emb: [N_img, d].
    text_emb: [N_txt, d].
    ks: the cut-offs K.
    text_to_image: int [N_txt], the image index of each caption. None means caption i
      belongs to image i, and then N_txt must equal N_img.
    chunk_size: query rows per block; peak memory is about chunk_size · max(N_img, N_txt)
      scores plus the embeddings.
    axis_name: inside ``jax.pmap``, the axis the rows are sharded over: each device gathers
      all rows (``text_to_image`` then indexes the gathered arrays) and every device returns
      the global recall. Without it, a call under jit/pmap scores only the arrays it is given.

  Returns:
    ``{'i2t_r{K}': ..., 't2i_r{K}': ...}`` in [0, 1]: Python floats when called eagerly,
    0-d arrays when traced (under jit or pmap). "Text retrieval" in the paper is i2t,
    "image retrieval" is t2i.
  """
  if axis_name is not None:
    image_emb = lax.all_gather(image_emb, axis_name, tiled=True)
    text_emb = lax.all_gather(text_emb, axis_name, tiled=True)
  traced = any(isinstance(x, jax.core.Tracer) for x in (image_emb, text_emb))
  if isinstance(text_to_image, jax.core.Tracer):
    raise errors.ConfigError("text_to_image must be a concrete array (NumPy), not a traced value")
  n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
  if text_to_image is None:
    if n_img != n_txt:
      raise errors.ConfigError(f"text_to_image is None but N_img={n_img} != N_txt={n_txt}; pass text_to_image")
    text_to_image = np.arange(n_txt)
  text_to_image = np.asarray(text_to_image)
  if text_to_image.shape != (n_txt,):
    raise errors.ConfigError(f"text_to_image must have shape ({n_txt},); got {text_to_image.shape}")
  if n_txt and (text_to_image.min() < 0 or text_to_image.max() >= n_img):
    raise errors.ConfigError(
      f"text_to_image values must lie in [0, {n_img}); got [{text_to_image.min()}, {text_to_image.max()}]"
    )
  if chunk_size < 1:
    raise errors.ConfigError(f"chunk_size={chunk_size} must be positive")
  ks = tuple(int(k) for k in ks)
  if any(k < 1 for k in ks):
    raise errors.ConfigError(f"ks={ks} must all be positive")

  own_captions = _captions_per_image(text_to_image, n_img)
  image_emb, text_emb = promote_float(image_emb), promote_float(text_emb)
  text_to_image = jnp.asarray(text_to_image, jnp.int32)
  if not traced:
    image_emb, text_emb, text_to_image, own_captions = _same_device(image_emb, text_emb, text_to_image, own_captions)

  b_img = min(chunk_size, max(n_img, 1))
  b_txt = min(chunk_size, max(n_txt, 1))
  # Padding image rows own no caption (−1); padding captions point at image 0. Both are
  # dropped below.
  i2t_rank = _image_to_text_ranks(chunk_rows(image_emb, b_img, 0.0), chunk_rows(own_captions, b_img, -1), text_emb)
  t2i_rank = _text_to_image_ranks(chunk_rows(text_emb, b_txt, 0.0), chunk_rows(text_to_image, b_txt, 0), image_emb)
  if traced:
    i2t_rank, t2i_rank = i2t_rank[:n_img], t2i_rank[:n_txt]
    return {name: jnp.mean(rank < k) for k in ks for name, rank in ((f"i2t_r{k}", i2t_rank), (f"t2i_r{k}", t2i_rank))}
  i2t_rank = np.asarray(i2t_rank)[:n_img]
  t2i_rank = np.asarray(t2i_rank)[:n_txt]

  out = {}
  for k in ks:
    out[f"i2t_r{k}"] = float(np.mean(i2t_rank < k))
    out[f"t2i_r{k}"] = float(np.mean(t2i_rank < k))
  return out


# ----------------------------------------------------------------------------------------
# Zero-shot classification and linear probe.
# ----------------------------------------------------------------------------------------


def zero_shot_classifier(class_text_emb) -> jax.Array:
  """The [C, d] zero-shot weights: normalise, average over templates, re-normalise (MATH.md §2).

  Args:
    class_text_emb: [C, T, d] (T prompt templates per class) or [C, d] (one prompt).
  """
  w = _normalize(promote_float(class_text_emb))
  if w.ndim == 3:
    w = _normalize(jnp.mean(w, axis=1))
  elif w.ndim != 2:
    raise errors.ConfigError(f"class_text_emb must be [C, T, d] or [C, d]; got shape {w.shape}")
  return w


def zero_shot_accuracy(image_emb, labels, class_text_emb) -> jax.Array:
  """Top-1 accuracy of argmax_c cos(h^x, w_c), w = ``zero_shot_classifier(class_text_emb)``.

  Args:
    image_emb: [N, d].
    labels: int [N], class indices into ``class_text_emb``.
    class_text_emb: [C, T, d] or [C, d].
  """
  # Scaling an image row does not change its argmax, so the images need no normalisation.
  scores = dot_t(promote_float(image_emb), zero_shot_classifier(class_text_emb))
  return jnp.mean(jnp.argmax(scores, axis=-1) == jnp.asarray(labels))


def standardize(train_feats, test_feats=None):
  """(x − mean_train) / std_train per feature; a constant feature gets std 1."""
  train = promote_float(train_feats)
  mean = jnp.mean(train, axis=0)
  std = jnp.std(train, axis=0)
  std = jnp.where(std > 1e-12, std, 1.0)
  scale = lambda x: (promote_float(x) - mean) / std
  return scale(train) if test_feats is None else (scale(train), scale(test_feats))


def _probe_objective(params, feats, onehot, l2):
  logits = jnp.matmul(feats, params["w"], precision=_HIGHEST) + params["b"]
  nll = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))
  return nll + 0.5 * l2 * jnp.sum(params["w"] ** 2)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_softmax_regression(
  feats, labels, num_classes: int, l2: float = 1e-4, steps: int = 500, tol: float = 1e-6
) -> dict[str, jax.Array]:
  """Multinomial logistic regression by full-batch L-BFGS from zero (deterministic).

  Minimises (1/n) Σ_i −log softmax(W x_i + b)_{y_i} + (l2/2) ‖W‖²_F, the bias unpenalised.
  This is scikit-learn's ``LogisticRegression`` objective C Σ_i CE_i + ½‖W‖² divided by
  n·C, so ``l2 = 1 / (n · C)``. Stops after ``steps`` iterations or once ‖∇‖ < tol.

  Returns:
    ``{'w': [d, C], 'b': [C]}``.
  """
  import optax  # Local: only the probe needs optax.

  feats = promote_float(feats)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=feats.dtype)
  params = {"w": jnp.zeros((feats.shape[1], num_classes), feats.dtype), "b": jnp.zeros((num_classes,), feats.dtype)}
  objective = lambda p: _probe_objective(p, feats, onehot, l2)
  value_and_grad = optax.value_and_grad_from_state(objective)
  opt = optax.lbfgs()

  def cond(carry):
    step, _, _, g = carry
    return (step < steps) & (optax.tree_utils.tree_norm(g) > tol)

  def body(carry):
    step, p, state, _ = carry
    value, g = value_and_grad(p, state=state)
    updates, state = opt.update(g, state, p, value=value, grad=g, value_fn=objective)
    p = optax.apply_updates(p, updates)
    # The gradient at the new point, for the stopping test (L-BFGS state caches it too).
    return step + 1, p, state, optax.tree_utils.tree_get(state, "grad")

  init_grad = jax.grad(objective)(params)
  _, params, _, _ = lax.while_loop(cond, body, (0, params, opt.init(params), init_grad))
  return params


def linear_probe_accuracy(
  train_feats, train_labels, test_feats, test_labels, *, l2: float = 1e-4, steps: int = 500
) -> float:
  """Test top-1 accuracy of a softmax-regression probe on frozen features (MATH.md §2).

  Features are standardised with the training mean and std; the probe is
  ``fit_softmax_regression`` (L-BFGS from zero, so the result is deterministic) with
  weight penalty (l2/2)‖W‖² on the mean cross-entropy, i.e. scikit-learn's C = 1/(n·l2).
  The number of classes is 1 + the largest label in either split.
  """
  errors.check_range("linear_probe.l2", float(l2), 0.0, None, low_inclusive=False)
  train_labels = np.asarray(train_labels)
  test_labels = np.asarray(test_labels)
  num_classes = int(max(train_labels.max(), test_labels.max())) + 1
  train, test = standardize(train_feats, test_feats)
  params = fit_softmax_regression(train, jnp.asarray(train_labels), num_classes, l2, steps)
  logits = jnp.matmul(test, params["w"], precision=_HIGHEST) + params["b"]
  return float(np.mean(np.asarray(jnp.argmax(logits, axis=-1)) == test_labels))
