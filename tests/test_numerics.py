"""The shared helpers against NumPy and brute force."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from modgap_jax import numerics


@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-6), (jnp.bfloat16, 1e-6)])
def test_l2_normalize_against_float64_numpy(dtype, rtol):
  x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
  x = np.asarray(jnp.asarray(x, dtype), np.float64)  # the values the function actually sees
  out = numerics.l2_normalize(jnp.asarray(x, dtype))
  assert out.dtype == jnp.float32  # widened, never computed in bfloat16
  np.testing.assert_allclose(np.asarray(out), x / np.linalg.norm(x, axis=-1, keepdims=True), rtol=rtol)


def test_l2_normalize_keeps_zero_rows_finite():
  out = np.asarray(numerics.l2_normalize(jnp.zeros((2, 3))))
  assert np.all(out == 0.0)


@pytest.mark.parametrize("n", range(0, 30))
def test_ceil_div_brute_force(n):
  for d in range(1, 9):
    assert numerics.ceil_div(n, d) == math.ceil(n / d) == min(k for k in range(n + 1) if k * d >= n)
