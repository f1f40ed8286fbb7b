"""clip_loss against a float64 NumPy reference written from MATH.md §1, on one and four devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from modgap_jax import losses

N_DEVICES = 4


def unit_rows(rng, n, d):
  x = rng.standard_normal((n, d))
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_loss_and_grads(hx, hy, beta):
  """Float64 NumPy: L = (1/2n) Σ_i [−log softmax_j(Z_i·)_i − log softmax_j(Z_·i)_i], and ∂L."""
  hx, hy = np.float64(hx), np.float64(hy)
  n = hx.shape[0]
  z = beta * hx @ hy.T
  row = z - z.max(axis=1, keepdims=True)
  p = np.exp(row) / np.exp(row).sum(axis=1, keepdims=True)  # row softmax
  col = z - z.max(axis=0, keepdims=True)
  q = np.exp(col) / np.exp(col).sum(axis=0, keepdims=True)  # column softmax
  loss = -(np.log(np.diag(p)).sum() + np.log(np.diag(q)).sum()) / (2 * n)
  dz = ((p - np.eye(n)) + (q - np.eye(n))) / (2 * n)
  return loss, beta * dz @ hy, beta * dz.T @ hx, (dz * (hx @ hy.T)).sum()


@pytest.mark.parametrize("n,d,beta", [(8, 4, 1.0), (16, 32, 14.3), (12, 8, 100.0)])
def test_matches_float64_reference(n, d, beta):
  rng = np.random.default_rng(n)
  hx, hy = unit_rows(rng, n, d), unit_rows(rng, n, d)
  loss, (gx, gy, gb) = jax.value_and_grad(losses.clip_loss, argnums=(0, 1, 2))(
    jnp.float32(hx), jnp.float32(hy), jnp.float32(beta)
  )
  ref_loss, ref_gx, ref_gy, ref_gb = reference_loss_and_grads(hx, hy, beta)
  np.testing.assert_allclose(loss, ref_loss, rtol=2e-5)
  np.testing.assert_allclose(gx, ref_gx, atol=2e-5 * max(beta, 1))
  np.testing.assert_allclose(gy, ref_gy, atol=2e-5 * max(beta, 1))
  np.testing.assert_allclose(gb, ref_gb, rtol=1e-4, atol=1e-6)


def test_known_closed_forms():
  # Identical rows: every logit equals β, so each softmax is uniform and L = log n.
  n = 6
  same = np.tile(unit_rows(np.random.default_rng(0), 1, 5), (n, 1))
  np.testing.assert_allclose(losses.clip_loss(same, same, 3.0), np.log(n), rtol=1e-6)
  # Orthonormal pairs: Z = βI, so L = −log(e^β / (e^β + n − 1)).
  eye = np.eye(n)
  beta = 2.5
  np.testing.assert_allclose(
    losses.clip_loss(eye, eye, beta), -np.log(np.exp(beta) / (np.exp(beta) + n - 1)), rtol=1e-6
  )


def test_stats_against_reference():
  rng = np.random.default_rng(1)
  hx, hy = unit_rows(rng, 10, 6), unit_rows(rng, 10, 6)
  beta = 7.0
  stats = losses.clip_loss_with_stats(hx, hy, beta)
  z = beta * hx @ hy.T
  lse_rows = np.log(np.exp(z).sum(axis=1))
  lse_cols = np.log(np.exp(z).sum(axis=0))
  np.testing.assert_allclose(stats.loss_image_to_text, np.mean(lse_rows - np.diag(z)), rtol=1e-5)
  np.testing.assert_allclose(stats.loss_text_to_image, np.mean(lse_cols - np.diag(z)), rtol=1e-5)
  np.testing.assert_allclose(stats.positive_logit, np.mean(np.diag(z)), rtol=1e-5, atol=1e-6)
  off = z[~np.eye(10, dtype=bool)]
  np.testing.assert_allclose(stats.negative_logit, off.mean(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats.loss, 0.5 * (stats.loss_image_to_text + stats.loss_text_to_image), rtol=1e-6)


def test_check_grads():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    hx, hy = jnp.asarray(unit_rows(rng, 6, 3)), jnp.asarray(unit_rows(rng, 6, 3))
    check_grads(losses.clip_loss, (hx, hy, jnp.float64(4.0)), order=2, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_bf16_inputs_reduce_in_float32():
  rng = np.random.default_rng(3)
  hx, hy = unit_rows(rng, 64, 16), unit_rows(rng, 64, 16)
  bf16 = losses.clip_loss(jnp.bfloat16(hx), jnp.bfloat16(hy), jnp.float32(50.0))
  assert bf16.dtype == jnp.float32
  # Only the inputs' rounding (2^-8 relative) differs from the float64 loss.
  ref, *_ = reference_loss_and_grads(np.float64(jnp.bfloat16(hx)), np.float64(jnp.bfloat16(hy)), 50.0)
  np.testing.assert_allclose(bf16, ref, rtol=1e-4)


def pmapped_value_and_grads(hx, hy, beta):
  def local(x, y, b):
    return jax.value_and_grad(lambda *a: losses.clip_loss(*a, axis_name="batch"), argnums=(0, 1, 2))(x, y, b)

  shard = lambda a: a.reshape(N_DEVICES, -1, a.shape[-1])
  betas = jnp.full((N_DEVICES,), beta, jnp.float32)
  return jax.pmap(local, axis_name="batch")(shard(jnp.float32(hx)), shard(jnp.float32(hy)), betas)


@pytest.mark.parametrize("n,d,beta", [(8, 4, 3.0), (32, 16, 14.3)])
def test_pmap_equals_one_device_on_global_batch(n, d, beta):
  assert jax.local_device_count() == N_DEVICES
  rng = np.random.default_rng(10 + n)
  hx, hy = unit_rows(rng, n, d), unit_rows(rng, n, d)
  value, (gx, gy, gb) = pmapped_value_and_grads(hx, hy, beta)
  ref_loss, ref_gx, ref_gy, ref_gb = reference_loss_and_grads(hx, hy, beta)
  np.testing.assert_allclose(value, np.full(N_DEVICES, ref_loss), rtol=2e-5)
  np.testing.assert_allclose(gx.reshape(n, d), ref_gx, atol=2e-5 * beta)
  np.testing.assert_allclose(gy.reshape(n, d), ref_gy, atol=2e-5 * beta)
  # β is replicated: each device holds its share of ∂L/∂β, and the shares sum to the total.
  np.testing.assert_allclose(gb.sum(), ref_gb, rtol=1e-4, atol=1e-6)


def test_pmap_stats_equal_one_device():
  rng = np.random.default_rng(4)
  hx, hy = unit_rows(rng, 16, 8), unit_rows(rng, 16, 8)
  one = losses.clip_loss_with_stats(hx, hy, 9.0)
  shard = lambda a: jnp.float32(a).reshape(N_DEVICES, -1, 8)
  many = jax.pmap(lambda x, y: losses.clip_loss_with_stats(x, y, 9.0, axis_name="batch"), axis_name="batch")(
    shard(hx), shard(hy)
  )
  for field in one._fields:
    np.testing.assert_allclose(getattr(many, field), np.full(N_DEVICES, getattr(one, field)), rtol=1e-5, atol=1e-6)


def test_local_blocks_never_hold_global_logits():
  """Inside pmap, the largest array in the jaxpr is the [m, n] block, not [n, n]."""
  n, d = 32, 8
  m = n // N_DEVICES

  def local(x, y):
    return losses.clip_loss(x, y, 2.0, axis_name="batch")

  jaxpr = jax.make_jaxpr(local, axis_env=[("batch", N_DEVICES)])(jnp.zeros((m, d)), jnp.zeros((m, d)))
  shapes = {tuple(v.aval.shape) for eqn in jaxpr.eqns for v in eqn.outvars}
  assert (m, n) in shapes
  assert (n, n) not in shapes


def test_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match=r"\[n, d\]"):
    losses.clip_loss(jnp.zeros((4, 3)), jnp.zeros((5, 3)), 1.0)
