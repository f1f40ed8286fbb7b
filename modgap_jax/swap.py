"""Modality swapping: hard and soft exchange of feature entries between modalities (MATH.md §4.2).

Both swaps act on the [n, d] feature matrices H_X (images) and H_Y (texts) of one step:

- **hard**: each entry (i, j) is exchanged between H_X and H_Y with probability 0.5;
- **soft**: with Λ_ij ~ U[0, 1], H_X ← Λ⊙H_X + (1−Λ)⊙H_Y and H_Y ← Λ⊙H_Y + (1−Λ)⊙H_X.

A step swaps at all with probability p: one Bernoulli draw per call, so "a p-fraction of
steps" means each step independently [C]. The swap acts on the features as given, which the
trainer passes L2-normalised, and by default re-normalises the rows afterwards [C: after
normalisation, then re-normalise]. Under pmap each device swaps its local rows with its own
key [C].

Every function is pure and jittable: the per-call decision is a traced boolean fed to
``lax.cond``, never a Python branch. Gradients flow through the swapped features, which the
loss uses, and through Λ's convex combination.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from jax import lax

from modgap_jax import errors, numerics

SWAP_METHODS = ("none", "hard", "soft")


def check_swap(method: str, p) -> None:
  """The swap's fields: ``method`` ∈ SWAP_METHODS and, where concrete, p ∈ [0, 1].

  :func:`apply` runs it; a trainer calls it at its config boundary, before any write.
  """
  errors.check_choice("swap.method", method, SWAP_METHODS)
  if isinstance(p, numbers.Real):  # a traced p (e.g. from a schedule) cannot be checked here
    errors.check_range("swap.p", float(p), 0.0, 1.0)


def _maybe_swap(key, image_emb, text_emb, p, swap_fn, renormalize):
  """Applies ``swap_fn(key, H_X, H_Y)`` with probability p (one draw), else the identity."""
  decide_key, swap_key = jax.random.split(key)
  do_swap = jax.random.bernoulli(decide_key, p)

  def swapped(operands):
    x, y = operands
    new_x, new_y = swap_fn(swap_key, x, y)
    if renormalize:
      new_x = numerics.l2_normalize(new_x).astype(new_x.dtype)
      new_y = numerics.l2_normalize(new_y).astype(new_y.dtype)
    return new_x.astype(x.dtype), new_y.astype(y.dtype)

  # lax.cond, not jnp.where: most steps do not swap (p ~ 1e-3), and the untaken branch is
  # then never computed on one device. The identity branch returns the inputs bit-for-bit,
  # so p = 0 is exactly the identity even with re-normalisation on.
  return lax.cond(do_swap, swapped, lambda operands: operands, (image_emb, text_emb))


def _hard_exchange(key, x, y):
  exchange = jax.random.bernoulli(key, 0.5, shape=jnp.broadcast_shapes(x.shape, y.shape))
  return jnp.where(exchange, y, x), jnp.where(exchange, x, y)


def _soft_mix(key, x, y):
  dtype = jnp.result_type(x, y)
  lam = jax.random.uniform(key, jnp.broadcast_shapes(x.shape, y.shape), dtype=dtype)
  # Both right-hand sides use the original x and y (MATH.md §4.2), not the updated H_X.
  return lam * x + (1 - lam) * y, lam * y + (1 - lam) * x


# method -> the exchange it makes of (H_X, H_Y) once a step swaps.
_EXCHANGES = {"hard": _hard_exchange, "soft": _soft_mix}


def apply(
  key: jax.Array, image_emb: jax.Array, text_emb: jax.Array, method: str, p, renormalize: bool = True
) -> tuple[jax.Array, jax.Array]:
  """With probability p, swaps H_X and H_Y by ``method`` ∈ SWAP_METHODS (MATH.md §4.2); 'none' is the identity.

  - 'hard' (HS): each entry (i, j) is exchanged between H_X and H_Y with probability 0.5;
  - 'soft' (SS): Λ_ij ~ U[0, 1], H_X ← Λ⊙H_X + (1−Λ)⊙H_Y and H_Y ← Λ⊙H_Y + (1−Λ)⊙H_X,
    with the same Λ and the original H_X on the right.

  Args:
    key: a ``jax.random`` key; one Bernoulli(p) draw decides the step, a second key the
      exchange mask or Λ.
    image_emb: H_X, [n, d].
    text_emb: H_Y, [n, d].
    method: 'none', 'hard' or 'soft'.
    p: the probability that this call swaps at all, in [0, 1].
    renormalize: re-normalise the rows to the unit sphere after a swap.

  Returns:
    The (possibly) swapped ``(image_emb, text_emb)``, in the input dtypes.

  Raises:
    ConfigError: ``method`` is unknown or a concrete ``p`` lies outside [0, 1].
  """
  check_swap(method, p)
  if method == "none":
    return image_emb, text_emb
  return _maybe_swap(key, image_emb, text_emb, p, _EXCHANGES[method], renormalize)


def hard_swap(key: jax.Array, image_emb: jax.Array, text_emb: jax.Array, p, *, renormalize: bool = True):
  """Hard swap (MATH.md §4.2 HS): ``apply(key, image_emb, text_emb, 'hard', p, renormalize)``."""
  return apply(key, image_emb, text_emb, "hard", p, renormalize)


def soft_swap(key: jax.Array, image_emb: jax.Array, text_emb: jax.Array, p, *, renormalize: bool = True):
  """Soft swap (MATH.md §4.2 SS): ``apply(key, image_emb, text_emb, 'soft', p, renormalize)``."""
  return apply(key, image_emb, text_emb, "soft", p, renormalize)
