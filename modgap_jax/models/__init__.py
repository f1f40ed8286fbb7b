"""Flax towers of the CLIP model (MATH.md §5.1).

- :mod:`resnet`: CLIP's ModifiedResNet image tower ("RN50" and smaller).
- :mod:`vit`: CLIP's Vision Transformer image tower.
- :mod:`text`: CLIP's causal text Transformer, and the Transformer both towers share.
- :mod:`clip`: the two-tower :class:`CLIP` module and :func:`create_model`.
"""

from modgap_jax.models.clip import (
  CLIP,
  Temperature,
  check_model_config,
  create_model,
  default_model_config,
  l2_normalize,
  rn50_config,
)
from modgap_jax.models.resnet import AttentionPool2d, Bottleneck, ModifiedResNet, feature_map_size
from modgap_jax.models.text import TextTransformer, Transformer
from modgap_jax.models.vit import VisionTransformer

__all__ = [
  'AttentionPool2d',
  'Bottleneck',
  'CLIP',
  'ModifiedResNet',
  'Temperature',
  'TextTransformer',
  'Transformer',
  'VisionTransformer',
  'check_model_config',
  'create_model',
  'default_model_config',
  'feature_map_size',
  'l2_normalize',
  'rn50_config',
]
