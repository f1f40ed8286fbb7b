"""Tests for modgap_jax.swap (MATH.md §4.2): identity at p = 0, swap statistics, convexity."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modgap_jax import errors, swap

SWAPS = {"hard": swap.hard_swap, "soft": swap.soft_swap}


def _pair(n=64, d=32, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  # Deliberately not unit rows: any stray re-normalisation would show up in the p = 0 test.
  x = rng.normal(size=(n, d)).astype(dtype)
  y = rng.normal(size=(n, d)).astype(dtype)
  return jnp.asarray(x), jnp.asarray(y)


@pytest.mark.parametrize("method", ["none", "hard", "soft"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_p_zero_is_bit_exact_identity(method, renormalize):
  x, y = _pair()
  fn = jax.jit(functools.partial(swap.apply, method=method, renormalize=renormalize))
  for seed in range(5):
    out_x, out_y = fn(jax.random.key(seed), x, y, p=0.0)
    np.testing.assert_array_equal(np.asarray(out_x), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(out_y), np.asarray(y))


def test_hard_swap_statistics_at_p_one():
  x, y = _pair(n=256, d=128)
  out_x, out_y = swap.hard_swap(jax.random.key(1), x, y, 1.0, renormalize=False)
  x, y, out_x, out_y = map(np.asarray, (x, y, out_x, out_y))
  exchanged = out_x == y
  # Every entry is either kept or exchanged, and both matrices agree on which.
  np.testing.assert_array_equal(np.where(exchanged, y, x), out_x)
  np.testing.assert_array_equal(np.where(exchanged, x, y), out_y)
  # Fraction exchanged ~ Binomial(n·d, 0.5)/(n·d): 5 standard deviations.
  m = exchanged.size
  assert abs(exchanged.mean() - 0.5) < 5 * np.sqrt(0.25 / m)


@pytest.mark.parametrize("method", ["hard", "soft"])
def test_swap_happens_in_p_fraction_of_calls(method):
  x, y = _pair(n=8, d=8)
  p, trials = 0.3, 2000
  keys = jax.random.split(jax.random.key(2), trials)
  fn = jax.jit(jax.vmap(lambda k: SWAPS[method](k, x, y, p)[0]))
  changed = np.any(np.asarray(fn(keys)) != np.asarray(x)[None], axis=(1, 2))
  # One Bernoulli(p) per call: the count is Binomial(2000, 0.3); 5 standard deviations.
  assert abs(changed.sum() - p * trials) < 5 * np.sqrt(trials * p * (1 - p))


def test_soft_swap_is_a_consistent_convex_combination():
  x, y = _pair(n=128, d=64, seed=3)
  out_x, out_y = swap.soft_swap(jax.random.key(3), x, y, 1.0, renormalize=False)
  x, y, out_x, out_y = (np.asarray(a, np.float64) for a in (x, y, out_x, out_y))
  lo, hi = np.minimum(x, y), np.maximum(x, y)
  tol = 1e-6
  for out in (out_x, out_y):
    assert np.all(out >= lo - tol) and np.all(out <= hi + tol)
  # Recover Λ from H_X' = Λ H_X + (1−Λ) H_Y; H_Y' must use the same Λ with the ORIGINAL H_X.
  lam = (out_x - y) / (x - y)
  np.testing.assert_allclose(out_y, lam * y + (1 - lam) * x, atol=1e-5)
  assert np.all((lam > -1e-4) & (lam < 1 + 1e-4))
  # Λ ~ U[0, 1]: mean 1/2, variance 1/12 (8192 draws: loose 6-sigma bounds).
  assert abs(lam.mean() - 0.5) < 6 * np.sqrt(1 / 12 / lam.size)
  assert abs(lam.var() - 1 / 12) < 0.01


@pytest.mark.parametrize("method", ["hard", "soft"])
def test_renormalize_gives_unit_rows(method):
  x, y = _pair(seed=4)
  out_x, out_y = swap.apply(jax.random.key(4), x, y, method, 1.0)
  for out in (out_x, out_y):
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out, np.float64), axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("method", ["hard", "soft"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_is_kept_and_jit_with_traced_p(method, dtype):
  x, y = _pair(seed=5)
  x, y = x.astype(dtype), y.astype(dtype)
  fn = jax.jit(swap.apply, static_argnames=("method", "renormalize"))
  out_x, out_y = fn(jax.random.key(5), x, y, method, jnp.float32(1.0))
  assert out_x.dtype == dtype and out_y.dtype == dtype
  assert out_x.shape == x.shape and out_y.shape == y.shape
  assert not np.array_equal(np.asarray(out_x), np.asarray(x))


@pytest.mark.parametrize("method", ["hard", "soft"])
def test_gradients_flow_through_the_swap(method):
  x, y = _pair(n=16, d=8, seed=6)
  w = jax.random.normal(jax.random.key(7), x.shape)

  def loss(x, y, p):
    out_x, out_y = swap.apply(jax.random.key(8), x, y, method, p)
    return jnp.sum(w * out_x) + jnp.sum(out_y)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))  # p is traced: one compilation for both
  gx, gy = grad(x, y, 1.0)
  assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))
  assert np.abs(gx).sum() > 0 and np.abs(gy).sum() > 0
  # No swap: the gradient is that of the identity.
  gx0, gy0 = grad(x, y, 0.0)
  np.testing.assert_array_equal(gx0, w)
  np.testing.assert_array_equal(gy0, np.ones_like(y))


def test_bad_arguments_raise_config_error():
  x, y = _pair()
  with pytest.raises(errors.ConfigError, match="swap.method"):
    swap.apply(jax.random.key(0), x, y, "partial", 0.5)
  with pytest.raises(errors.ConfigError, match="swap.p"):
    swap.apply(jax.random.key(0), x, y, "hard", 1.5)
  assert swap.SWAP_METHODS == ("none", "hard", "soft")
