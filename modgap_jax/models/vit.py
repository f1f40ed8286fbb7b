"""CLIP's Vision Transformer image tower.

Patches are embedded by a strided convolution, a learned class token is prepended, a learned
positional embedding is added, and ``ln_pre`` normalises the sequence before the pre-LN
Transformer (CLIP puts a LayerNorm there, unlike the original ViT). The class token's output
goes through ``ln_post`` and a bias-free projection to the joint embedding.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from modgap_jax.errors import ConfigError
from modgap_jax.models.text import Transformer, dense, layer_norm

Dtype = Any


class VisionTransformer(nn.Module):
  """Images [n, H, W, C] with H = W = image_size → features [n, output_dim] (not normalised).

  Attributes:
    image_size: input side in pixels; must be a multiple of ``patch_size``.
    patch_size: side of the square, non-overlapping patches.
    width, depth, heads: Transformer shape (width must be divisible by heads).
    output_dim: the joint embedding dimension.
    dtype: compute dtype (float32 or bfloat16); parameters are float32.
    quick_gelu: the MLPs' activation, QuickGELU (CLIP's, the default) or else the exact GELU.
  """

  image_size: int
  patch_size: int
  width: int
  depth: int
  heads: int
  output_dim: int
  dtype: Dtype = jnp.float32
  quick_gelu: bool = True

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    del train  # No dropout or batch statistics; kept for the same signature as the ResNet.
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ConfigError(f'images are {images.shape[1]}x{images.shape[2]} but model.image_size={self.image_size}')
    # CLIP scales its class token, positional embedding and projection by width^-1/2.
    scale = self.width**-0.5
    p = self.patch_size
    x = nn.Conv(
      self.width,
      (p, p),
      strides=(p, p),
      padding='VALID',
      use_bias=False,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      name='patch_embedding',
    )(images.astype(self.dtype))
    n = x.shape[0]
    x = x.reshape(n, -1, self.width)
    cls = self.param('class_embedding', nn.initializers.normal(scale), (self.width,), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (n, 1, self.width)), x], axis=1)
    pos = self.param('positional_embedding', nn.initializers.normal(scale), x.shape[1:], jnp.float32)
    x = layer_norm('ln_pre')(x + pos.astype(self.dtype)).astype(self.dtype)
    # Only the class token (row 0) is read out, so the last block computes that row alone.
    x = Transformer(self.width, self.depth, self.heads, self.dtype, self.quick_gelu, name='transformer')(
      x, output_index=jnp.zeros((n,), jnp.int32)
    )
    x = layer_norm('ln_post')(x[:, 0])
    return dense(self.output_dim, scale, self.dtype, 'projection', use_bias=False)(x)
