"""The two-tower CLIP model, its config factory and small configs.

Parameter tree::

    {'image': <tower>, 'text': <TextTransformer>, 'temperature': {'nu': float32 scalar}}

plus, for ``resnet.norm='batch'``, a ``batch_stats`` collection under ``'image'``.

ν lives in the tree so checkpoints have the same shape in every temperature mode,
but the forward pass never reads it: the trainer computes β(ν) from ``params['temperature']
['nu']`` itself (MATH.md §1), and the optimizer decides whether ν learns.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from modgap_jax import numerics
from modgap_jax.errors import ConfigError, check_choice
from modgap_jax.models.resnet import NORMS, ModifiedResNet, feature_map_size
from modgap_jax.models.text import TextTransformer
from modgap_jax.models.vit import VisionTransformer

IMAGE_TOWERS = ('resnet', 'vit')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


l2_normalize = numerics.l2_normalize  # re-exported: models.l2_normalize is public API


class Temperature(nn.Module):
  """Holds the scalar ν of β(ν) (MATH.md §1) as float32 param 'nu'."""

  nu_init: float

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param('nu', lambda _: jnp.asarray(self.nu_init, jnp.float32))


class CLIP(nn.Module):
  """Image and text towers mapping into one unit sphere.

  Attributes:
    image: image tower, called as ``image(images, train=...)`` → [n, embed_dim].
    text: text tower, called as ``text(tokens)`` → [n, embed_dim].
    nu_init: initial value of ``params['temperature']['nu']``.
  """

  image: nn.Module
  text: nn.Module
  nu_init: float

  def setup(self):
    self.temperature = Temperature(self.nu_init)

  def encode_image(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Images [n, S, S, C] → L2-normalised float32 embeddings [n, embed_dim]."""
    return l2_normalize(self.image(images, train=train))

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """Int tokens [n, L] → L2-normalised float32 embeddings [n, embed_dim]."""
    return l2_normalize(self.text(tokens))

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Returns ``(image_emb, text_emb)``, both L2-normalised float32 [n, embed_dim]."""
    # Touch ν so that `init` through __call__ creates it; its value is not used here.
    self.temperature()
    return self.encode_image(images, train=train), self.encode_text(tokens)


def _positive_int(field: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f'{field}={value!r} is not valid; it must be a positive integer')
  return value


def _divisible(width_field: str, width: int, heads_field: str, heads: int) -> None:
  if width % heads:
    raise ConfigError(f'{heads_field}={heads} must divide {width_field}={width}')


def check_model_config(model_cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError, naming the field as ``model.<field>``, unless :func:`create_model` can build it.

  Fields:

  - ``image_tower``: 'resnet' or 'vit'.
  - ``embed_dim``: joint embedding dimension.
  - ``image_size``: input side in pixels (square images; fixes the positional embeddings).
  - ``vocab_size``, ``context_length``: text tokens; EOT must be the largest id.
  - ``dtype``: compute dtype, 'float32' (default when absent) or 'bfloat16'; params stay float32.
  - ``quick_gelu``: optional bool, default True: the Transformers' MLP activation, CLIP's
    QuickGELU, or else the exact GELU (open_clip's configs without ``quick_gelu``).
  - ``text.width``, ``text.depth``, ``text.heads``.
  - if resnet: ``resnet.layers`` (tuple, one entry per stage), ``resnet.width`` (even),
    ``resnet.heads`` (divides ``width·2^(stages−1)·4``), ``resnet.norm`` ('batch' or 'group'),
    and optionally ``resnet.axis_name`` (default None: the pmap axis BatchNorm syncs over;
    the trainer should set it to its pmap axis, and apply with ``train=True`` only inside it).
  - if vit: ``vit.patch_size`` (divides ``image_size``), ``vit.width``, ``vit.depth``,
    ``vit.heads``.
  """
  cfg = model_cfg
  check_choice('model.dtype', cfg.get('dtype', 'float32'), tuple(DTYPES))
  check_choice('model.quick_gelu', cfg.get('quick_gelu', True), (True, False))
  tower = check_choice('model.image_tower', cfg.image_tower, IMAGE_TOWERS)
  for field in ('embed_dim', 'image_size', 'vocab_size', 'context_length'):
    _positive_int(f'model.{field}', cfg[field])
  if tower == 'resnet':
    r = cfg.resnet
    if not tuple(r.layers):
      raise ConfigError('model.resnet.layers=() is not valid; give at least one stage')
    for i, blocks in enumerate(r.layers):
      _positive_int(f'model.resnet.layers[{i}]', blocks)
    width = _positive_int('model.resnet.width', r.width)
    if width % 2:
      raise ConfigError(f'model.resnet.width={width} is not valid; it must be even (the stem uses width/2)')
    heads = _positive_int('model.resnet.heads', r.heads)
    _divisible('model.resnet.width*2**(stages-1)*4', width * 2 ** (len(r.layers) - 1) * 4, 'model.resnet.heads', heads)
    check_choice('model.resnet.norm', r.norm, NORMS)
    feature_map_size(cfg.image_size, len(r.layers))
  else:
    v = cfg.vit
    patch = _positive_int('model.vit.patch_size', v.patch_size)
    if cfg.image_size % patch:
      raise ConfigError(f'model.vit.patch_size={patch} must divide model.image_size={cfg.image_size}')
    _check_transformer('model.vit', v)
  _check_transformer('model.text', cfg.text)


def _check_transformer(prefix: str, cfg: ml_collections.ConfigDict) -> None:
  """A Transformer's ``depth``, ``width`` and ``heads``: positive, with heads dividing width."""
  _positive_int(f'{prefix}.depth', cfg.depth)
  width = _positive_int(f'{prefix}.width', cfg.width)
  _divisible(f'{prefix}.width', width, f'{prefix}.heads', _positive_int(f'{prefix}.heads', cfg.heads))


def _transformer_shape(cfg: ml_collections.ConfigDict) -> dict[str, int]:
  """The ``width``, ``depth`` and ``heads`` of a ViT or text Transformer config block."""
  return dict(width=cfg.width, depth=cfg.depth, heads=cfg.heads)


def create_model(model_cfg: ml_collections.ConfigDict, nu_init: float) -> CLIP:
  """Builds a :class:`CLIP` from a model config that passes :func:`check_model_config` (checked here)."""
  check_model_config(model_cfg)
  cfg = model_cfg
  # Every tower maps into the joint space at one compute dtype (parameters stay float32).
  joint = dict(output_dim=cfg.embed_dim, dtype=DTYPES[cfg.get('dtype', 'float32')])
  quick_gelu = bool(cfg.get('quick_gelu', True))
  if cfg.image_tower == 'resnet':
    r = cfg.resnet
    image = ModifiedResNet(
      layers=tuple(r.layers),
      heads=r.heads,
      image_size=cfg.image_size,
      width=r.width,
      norm=r.norm,
      axis_name=r.get('axis_name', None),
      **joint,
    )
  else:
    image = VisionTransformer(
      image_size=cfg.image_size,
      patch_size=cfg.vit.patch_size,
      quick_gelu=quick_gelu,
      **_transformer_shape(cfg.vit),
      **joint,
    )
  text = TextTransformer(
    vocab_size=cfg.vocab_size,
    context_length=cfg.context_length,
    quick_gelu=quick_gelu,
    **_transformer_shape(cfg.text),
    **joint,
  )
  return CLIP(image=image, text=text, nu_init=float(nu_init))


def default_model_config() -> ml_collections.ConfigDict:
  """A tiny CLIP (4-stage ResNet of width 16, 2-layer text of width 64) at 32 px for CPU runs.

  GroupNorm keeps it free of batch statistics; ``vit`` holds a matching tiny ViT.
  """
  return ml_collections.ConfigDict(
    dict(
      image_tower='resnet',
      embed_dim=64,
      image_size=32,
      vocab_size=259,  # modgap_jax.data.tokenizer.vocab_size: padding, 256 bytes, SOT, EOT.
      context_length=32,
      dtype='float32',
      resnet=dict(layers=(1, 1, 1, 1), width=16, heads=4, norm='group', axis_name=None),
      vit=dict(patch_size=8, width=64, depth=2, heads=4),
      text=dict(width=64, depth=2, heads=4),
    )
  )


def rn50_config() -> ml_collections.ConfigDict:
  """CLIP RN50's shape at 224 px (MATH.md §5.1), with CLIP's 49408-token vocabulary."""
  cfg = default_model_config()
  cfg.embed_dim = 1024
  cfg.image_size = 224
  cfg.vocab_size = 49408
  cfg.context_length = 77
  cfg.resnet = dict(layers=(3, 4, 6, 3), width=64, heads=32, norm='batch', axis_name=None)
  cfg.text = dict(width=512, depth=12, heads=8)
  return cfg
