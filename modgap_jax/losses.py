"""The CLIP contrastive loss (symmetric InfoNCE), on one device or sharded over many.

MATH.md §1: with logits Z_ij = β ⟨h^x_i, h^y_j⟩ over a batch of n pairs,

    L = (1/2n) Σ_i [ −log softmax_j(Z_i·)_i − log softmax_j(Z_·i)_i ].

Under ``jax.pmap(..., axis_name=a)`` each device holds m = n/D local rows of each modality.
A device gathers the *other* modality (all n rows) and scores only its own m rows against it:
an [m, n] block per direction, never the global [n, n] matrix. Its positives sit on the
diagonal of its local block, at columns ``offset + arange(m)`` with ``offset = m ·
axis_index``.

Gradient convention under pmap: the value returned on every device is the global loss L, and
its gradient with respect to a device's *local* embeddings equals the matching rows of ∂L/∂H
on one device. ``lax.all_gather`` transposes to a reduce-scatter, so the cotangents that other
devices' rows send through the gathered copy arrive on the owner. Each device's parameter
gradient is therefore its *share* of ∂L/∂θ, and the shares add up: a trainer combines them
with ``lax.psum`` (see ``modgap_jax.train``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class ClipLossStats(NamedTuple):
  """What training logs besides the loss. All are global-batch means.

  Attributes:
    loss: L, the mean of the two directions.
    loss_image_to_text: (1/n) Σ_i −log softmax_j(Z_i·)_i.
    loss_text_to_image: (1/n) Σ_i −log softmax_j(Z_·i)_i.
    positive_logit: mean of the n diagonal logits β⟨h^x_i, h^y_i⟩.
    negative_logit: mean of the n(n−1) off-diagonal logits.
  """

  loss: jax.Array
  loss_image_to_text: jax.Array
  loss_text_to_image: jax.Array
  positive_logit: jax.Array
  negative_logit: jax.Array


def _scaled_similarity(rows: jax.Array, columns: jax.Array, beta: jax.Array) -> jax.Array:
  """β · rows @ columnsᵀ, accumulated in at least float32 (bf16 inputs are promoted)."""
  dtype = jnp.promote_types(rows.dtype, jnp.float32)
  sim = jnp.einsum("md,nd->mn", rows, columns, preferred_element_type=dtype)
  return jnp.asarray(beta, dtype) * sim


def _block_sums(logits: jax.Array, offset: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Σ over rows of −log softmax at the positive; Σ of positive logits; Σ of all logits.

  ``logits`` is an [m, n] block whose row r has its positive at column offset + r.
  """
  m = logits.shape[0]
  positives = jnp.take_along_axis(logits, (offset + jnp.arange(m))[:, None], axis=1)[:, 0]
  nll = jax.nn.logsumexp(logits, axis=1) - positives
  return nll.sum(), positives.sum(), logits.sum()


def _share_of_global(local_value: jax.Array, axis_name: str | None) -> jax.Array:
  """Returns Σ_devices local_value, with the gradient of local_value alone.

  A bare ``psum`` would send every device's unit cotangent back through the sum (a factor D
  under pmap's transpose rule); the stop-gradient keeps each device's gradient its own share.
  """
  if axis_name is None:
    return local_value
  return local_value + lax.stop_gradient(lax.psum(local_value, axis_name) - local_value)


def clip_loss_with_stats(
  image_emb: jax.Array, text_emb: jax.Array, beta: jax.Array, *, axis_name: str | None = None
) -> ClipLossStats:
  """The CLIP loss of MATH.md §1 together with its per-direction parts and logit means.

  Args:
    image_emb: [m, d] L2-normalised image features (the local rows when sharded).
    text_emb: [m, d] L2-normalised text features, paired row by row with ``image_emb``.
    beta: scalar inverse temperature β.
    axis_name: the pmap axis to shard the batch over; None on one device.

  Returns:
    ClipLossStats of the *global* batch (n = m · devices), all float32 scalars. See the
    module docstring for what the gradient is under pmap.
  """
  # jnp.asarray canonicalises NumPy float64 to float32 unless x64 is enabled.
  image_emb, text_emb = jnp.asarray(image_emb), jnp.asarray(text_emb)
  if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
    raise ValueError(f"image_emb and text_emb must both be [n, d]; got {image_emb.shape} and {text_emb.shape}")
  m = image_emb.shape[0]
  if axis_name is None:
    all_images, all_texts, offset, n = image_emb, text_emb, jnp.int32(0), m
  else:
    all_images = lax.all_gather(image_emb, axis_name, tiled=True)
    all_texts = lax.all_gather(text_emb, axis_name, tiled=True)
    offset = m * lax.axis_index(axis_name)
    n = all_images.shape[0]

  i2t_nll, positive_sum, i2t_logit_sum = _block_sums(_scaled_similarity(image_emb, all_texts, beta), offset)
  t2i_nll, _, _ = _block_sums(_scaled_similarity(text_emb, all_images, beta), offset)

  loss_i2t = _share_of_global(i2t_nll / n, axis_name)
  loss_t2i = _share_of_global(t2i_nll / n, axis_name)
  # Logit means are for logging only; no gradient is wanted through them.
  positive_sum, i2t_logit_sum = lax.stop_gradient((positive_sum, i2t_logit_sum))
  if axis_name is not None:
    positive_sum, i2t_logit_sum = lax.psum((positive_sum, i2t_logit_sum), axis_name)
  negative_mean = (i2t_logit_sum - positive_sum) / max(n * (n - 1), 1)
  return ClipLossStats(
    loss=0.5 * (loss_i2t + loss_t2i),
    loss_image_to_text=loss_i2t,
    loss_text_to_image=loss_t2i,
    positive_logit=positive_sum / n,
    negative_logit=negative_mean,
  )


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, beta: jax.Array, *, axis_name: str | None = None) -> jax.Array:
  """L = (1/2n) Σ_i [−log softmax_j(Z_i·)_i − log softmax_j(Z_·i)_i], Z = β H_X H_Yᵀ (MATH.md §1).

  ``image_emb`` and ``text_emb`` are L2-normalised [n, d] rows (the local rows under pmap
  with ``axis_name`` set); ``beta`` is a scalar. The logsumexp runs in float32 even for
  bf16 inputs. Under pmap the value is the global-batch loss and the gradient with respect
  to the local rows equals the one-device gradient's rows.
  """
  return clip_loss_with_stats(image_emb, text_emb, beta, axis_name=axis_name).loss
