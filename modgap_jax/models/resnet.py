"""CLIP's ModifiedResNet image tower (the "RN50" of MATH.md §5.1), sized by config.

It differs from a torchvision ResNet in three ways:

1. A three-conv stem (3x3 convs of width/2, width/2 and width, the first with stride 2)
   followed by a 2x2 average pool, instead of one 7x7 conv and a max pool.
2. Anti-aliased downsampling: every conv has stride 1, and a stride-s block average-pools
   before its strided path (after the 3x3 conv in the main branch, before the 1x1 conv in
   the shortcut).
3. Attention pooling instead of global average pooling: one multi-head attention whose query
   is the mean of the final feature map, over the map's tokens plus that mean, each with a
   learned positional embedding, projected to the joint embedding dimension.

The number of stages is ``len(layers)``; stage i has ``layers[i]`` bottlenecks of
``width·2^i`` channels (expanded ×4) and stride 2 except for the first. The spatial side
therefore shrinks by 4 in the stem and 2 per later stage, with floors (224 px → 7×7 for
RN50's four stages). Tiny images need fewer stages: 32 px works with four (1×1 map), 8 px
with two. A side that would reach 0 raises ConfigError (see :func:`feature_map_size`).

Norms: ``'batch'`` is CLIP's BatchNorm (state in the ``batch_stats`` collection, running
averages used when ``train=False``, statistics averaged over ``axis_name`` under pmap);
``'group'`` is GroupNorm, which has no state and is handy for tiny CPU runs.

Initialisation: convs are Kaiming-normal (fan-out), as torchvision does for ResNets; the last
norm of every bottleneck starts with scale 0 so each block starts as the identity on its
shortcut (CLIP does the same); attention pooling projections are normal with std C^-1/2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from modgap_jax.errors import ConfigError
from modgap_jax.models.text import attention

Dtype = Any
NORMS = ('batch', 'group')
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def feature_map_size(image_size: int, num_stages: int) -> int:
  """Side of the final feature map; raises ConfigError when it would be empty.

  The stem's stride-2 3x3 conv (padding 1) gives ⌊(s−1)/2⌋+1, its 2x2 pool halves with a
  floor, and each stage after the first halves again with a floor.
  """
  side = (image_size - 1) // 2 + 1
  side //= 2
  for _ in range(num_stages - 1):
    side //= 2
  if side < 1:
    need = 2 ** (num_stages + 1) - 1  # Smallest side whose stem output is 2^stages.
    raise ConfigError(
      f'model.image_size={image_size} is too small for {num_stages} resnet stages '
      f'(model.resnet.layers); use image_size >= {need} or fewer stages'
    )
  return side


def make_norm(
  kind: str, train: bool, axis_name: str | None, dtype: Dtype, zero_scale: bool = False, name: str | None = None
) -> nn.Module:
  """Returns the norm layer for ``kind``, one of NORMS (checked by ``models.check_model_config``)."""
  # Two-pass variances throughout: E[x²]−E[x]² cancels badly on small groups, and the result
  # then depends on XLA's batch-size-dependent reduction order (3e-5 vs 9e-7 on embeddings).
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  if kind == 'batch':
    # PyTorch's defaults (momentum 0.1 ⇒ flax 0.9, eps 1e-5), as CLIP used.
    return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      use_fast_variance=False,
      axis_name=axis_name,
      dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=scale_init,
      name=name,
    )
  return _GroupNorm(dtype=dtype, scale_init=scale_init, name=name)


class _GroupNorm(nn.Module):
  """GroupNorm with gcd(32, C) groups, so narrow tiny-config layers still divide evenly.

  The inner module's name keeps the parameter paths (``…/group_norm/{scale,bias}``) of the
  ``flax.linen.GroupNorm`` this layer used before, so earlier checkpoints still restore.
  """

  dtype: Dtype = jnp.float32
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return GroupNorm(
      num_groups=math.gcd(32, x.shape[-1]), dtype=self.dtype, scale_init=self.scale_init, name='group_norm'
    )(x)


class GroupNorm(nn.Module):
  """Group normalisation of NHWC maps, statistics in float32, two-pass variance.

  For the channels c of group g (C/G of them) and n = H·W·C/G values per example:
    μ_g = (1/n) Σ_{h,w,c∈g} x_hwc,   σ²_g = (1/n) Σ_{h,w,c∈g} (x_hwc − μ_g)²,
    y_hwc = (x_hwc − μ_g) / √(σ²_g + ε) · γ_c + b_c.
  The same numbers as ``flax.linen.GroupNorm(use_fast_variance=False)``.
  """

  num_groups: int
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  scale_init: Any = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    scale = self.param('scale', self.scale_init, (channels,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (channels,), jnp.float32)
    x = x.astype(jnp.float32)
    # Each sum runs over the spatial axes per channel first, then over a group's channels (equal
    # counts, so the mean of means is the group mean). Reducing over (H, W, C/G) of a 5-D
    # reshape in one go made XLA:CPU transpose the maps: the default config's image tower took
    # 78 ms fwd+bwd that way against 62 ms this way (2-core CPU, batch 128).
    mean = self._group_mean(jnp.mean(x, axis=(1, 2)))
    centred = x - mean[:, None, None, :]
    variance = self._group_mean(jnp.mean(jnp.square(centred), axis=(1, 2)))
    multiplier = jax.lax.rsqrt(variance + self.epsilon) * scale
    return (centred * multiplier[:, None, None, :] + bias).astype(self.dtype)

  def _group_mean(self, per_channel: jax.Array) -> jax.Array:
    """[N, C] per-channel values → each group's mean, repeated over the group's channels."""
    n, channels = per_channel.shape
    grouped = per_channel.reshape(n, self.num_groups, channels // self.num_groups)
    return jnp.broadcast_to(jnp.mean(grouped, axis=-1, keepdims=True), grouped.shape).reshape(n, channels)


class Conv2d(nn.Module):
  """Bias-free k×k convolution of NHWC maps with PyTorch's symmetric zero padding p = k // 2.

  y[n, a, b, o] = Σ_{i, j < k} Σ_c x̃[n, s·a + i, s·b + j, c] · K[i, j, c, o],

  with x̃ the input padded by p on each side, K the HWIO kernel (parameter ``kernel``, the same
  name and shape as ``nn.Conv``'s) and s the stride. Explicit padding, because 'SAME' would pad
  (0, 1) for stride-2 convs.

  Two cases avoid XLA's convolution, because XLA:CPU runs them slowly (the default towers'
  image fwd+bwd at batch 128 on 2 cores: 68 ms with XLA's convolutions everywhere, 50 ms with
  the first, 44 ms with both; open_clip 37 ms):

  - a map narrower than the kernel (3x3 convs over the 2x2 maps of the 32 px tiny config's
    last stage) is convolved as the sum over taps of shifted maps times K[i, j]; XLA:CPU
    rewrites such a convolution into one 5x slower than this sum (24.6 against 5.1 ms fwd+bwd,
    128→128 channels);
  - stride-1 1x1 convs are matmuls over the channel axis, so their weight gradients need no
    channel-major transposes of the activations.
  """

  features: int
  kernel_size: int
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', _conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
    return convolve(x.astype(self.dtype), kernel.astype(self.dtype), self.strides)


def convolve(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
  """The convolution of :class:`Conv2d`: x [n, h, w, c], HWIO kernel [k, k, c, o] → [n, h', w', o]."""
  k, pad = kernel.shape[0], kernel.shape[0] // 2
  if stride == 1 and min(x.shape[1:3]) < k:
    return _tap_sum_conv(x, kernel)
  if stride == 1 and k == 1:
    return x @ kernel[0, 0]
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


def _tap_sum_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Stride-1 convolution as Σ_{i,j} x̃[:, i:i+h', j:j+w'] @ K[i, j] (see :class:`Conv2d`)."""
  h, w = x.shape[1:3]
  k = kernel.shape[0]
  pad = k // 2
  x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out_h, out_w = h + 2 * pad - k + 1, w + 2 * pad - k + 1
  taps = [x[:, i : i + out_h, j : j + out_w] @ kernel[i, j] for i in range(k) for j in range(k)]
  return sum(taps[1:], taps[0])


def _avg_pool(x: jax.Array, stride: int) -> jax.Array:
  return x if stride == 1 else nn.avg_pool(x, (stride, stride), strides=(stride, stride))


class Bottleneck(nn.Module):
  """1x1 → 3x3 → avgpool(stride) → 1x1 (×4 channels), plus a pooled 1x1 shortcut if needed."""

  planes: int
  stride: int = 1
  norm: str = 'batch'
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    def norm(name, zero_scale=False):
      return make_norm(self.norm, train, self.axis_name, self.dtype, zero_scale, name)

    out_channels = 4 * self.planes
    y = nn.relu(norm('norm1')(Conv2d(self.planes, 1, dtype=self.dtype, name='conv1')(x)))
    y = nn.relu(norm('norm2')(Conv2d(self.planes, 3, dtype=self.dtype, name='conv2')(y)))
    y = _avg_pool(y, self.stride)
    y = norm('norm3', zero_scale=True)(Conv2d(out_channels, 1, dtype=self.dtype, name='conv3')(y))
    shortcut = x
    if self.stride > 1 or x.shape[-1] != out_channels:
      shortcut = _avg_pool(x, self.stride)
      shortcut = norm('downsample_norm')(Conv2d(out_channels, 1, dtype=self.dtype, name='downsample_conv')(shortcut))
    return nn.relu(y + shortcut)


class AttentionPool2d(nn.Module):
  """Multi-head attention pooling of a feature map [n, h, w, C] → [n, output_dim].

  Tokens are the h·w positions with the mean position prepended, each plus a learned
  positional embedding of shape [h·w + 1, C]. Only the mean token is a query; keys and values
  come from all tokens. The result goes through the output projection to ``output_dim``.
  """

  num_tokens: int  # h·w + 1; fixed by the input resolution.
  heads: int
  output_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    if h * w + 1 != self.num_tokens:
      raise ConfigError(
        f'feature map {h}x{w} does not match the {self.num_tokens - 1} positions fixed by model.image_size'
      )
    x = x.reshape(n, h * w, c)
    mean = jnp.mean(x.astype(jnp.float32), axis=1, keepdims=True).astype(x.dtype)
    x = jnp.concatenate([mean, x], axis=1)
    pos = self.param('positional_embedding', nn.initializers.normal(c**-0.5), (self.num_tokens, c), jnp.float32)
    x = x + pos.astype(x.dtype)
    out = attention(self.heads, c, self.output_dim, self.dtype, c**-0.5)(x[:, :1], x)
    return out[:, 0]


class ModifiedResNet(nn.Module):
  """CLIP's ModifiedResNet: images [n, S, S, C] with S = image_size → [n, output_dim].

  Attributes:
    layers: bottlenecks per stage, e.g. (3, 4, 6, 3) for RN50.
    output_dim: joint embedding dimension (1024 for RN50).
    heads: attention-pooling heads; must divide ``width·2^(stages−1)·4`` (32 for RN50).
    image_size: input side in pixels; fixes the pooling's positional embedding.
    width: stem width and first-stage planes (64 for RN50).
    norm: 'batch' (CLIP's) or 'group'.
    axis_name: pmap axis over which BatchNorm averages its batch statistics, or None.
    dtype: compute dtype (float32 or bfloat16); parameters are float32.
  """

  layers: Sequence[int]
  output_dim: int
  heads: int
  image_size: int
  width: int = 64
  norm: str = 'batch'
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ConfigError(f'images are {images.shape[1]}x{images.shape[2]} but model.image_size={self.image_size}')
    side = feature_map_size(self.image_size, len(self.layers))

    def norm(name):
      return make_norm(self.norm, train, self.axis_name, self.dtype, name=name)

    x = images.astype(self.dtype)
    stem = ((self.width // 2, 2), (self.width // 2, 1), (self.width, 1))
    for i, (features, stride) in enumerate(stem, start=1):
      x = Conv2d(features, 3, stride, self.dtype, name=f'stem_conv{i}')(x)
      x = nn.relu(norm(f'stem_norm{i}')(x))
    x = _avg_pool(x, 2)
    for stage, blocks in enumerate(self.layers):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = Bottleneck(
          self.width * 2**stage, stride, self.norm, self.axis_name, self.dtype, name=f'stage{stage + 1}_block{block}'
        )(x, train)
    return AttentionPool2d(side * side + 1, self.heads, self.output_dim, self.dtype, name='attnpool')(x)
