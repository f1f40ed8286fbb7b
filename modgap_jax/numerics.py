"""Two small numerical helpers that the losses, metrics, swaps, models and data all share.

This module imports JAX only inside :func:`l2_normalize`, so that the host-side data pipeline
(which grain's worker processes import) can use :func:`ceil_div` without loading JAX.
"""

from __future__ import annotations

from typing import Any

# Floor on ‖x‖²: an all-zero row (impossible for real embeddings, cheap to guard) stays
# finite in value and gradient, and any row with ‖x‖ > 1e-12 is untouched.
NORM_EPS_SQ = 1e-24


def l2_normalize(x: Any) -> Any:
  """x / ‖x‖₂ along the last axis, i.e. x · rsqrt(max(Σ x², 1e-24)), as a jax.Array.

  Computed in float32 or wider (bfloat16 rows are widened, float64 stays float64), so a
  low-precision input loses nothing in the norm; the result has that wider dtype.
  """
  import jax.numpy as jnp
  from jax import lax

  x = jnp.asarray(x)
  acc = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  return acc * lax.rsqrt(jnp.maximum(jnp.sum(acc * acc, axis=-1, keepdims=True), NORM_EPS_SQ))


def ceil_div(n: int, d: int) -> int:
  """⌈n / d⌉ for non-negative integers n and positive d."""
  return -(-int(n) // int(d))
