"""open_clip model configs: the bundled ones, reading any other, and translating to and from ours.

An open_clip config (the JSON in open_clip's ``model_configs/``, or the ``model_cfg`` of an
``open_clip_config.json`` published beside the weights) fixes the towers' shapes::

    {"embed_dim": E, "quick_gelu": bool (default false),
     "vision_cfg": {"image_size": S, "layers": [4 ints] (ModifiedResNet) or int (ViT),
                    "width": W, "head_width": 64, "patch_size": P (ViT)},
     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": W_t, "heads": H_t, "layers": D_t}}

Heads follow open_clip: a ViT has ``width / head_width`` of them, a ModifiedResNet's attention
pool ``32·width / head_width`` (its last stage has 32·width channels). Options that change the
computation (layer scale, attentional pooling, other pools, Hugging Face or timm towers, …)
have no counterpart in our towers, so a config that sets one raises a ConfigError naming it
rather than loading into a model that would compute something else.

The bundled configs are CLIP's released shapes: RN50, RN101, RN50x4, ViT-B-32, ViT-B-16,
ViT-L-14, each also as ``<name>-quickgelu``. OpenAI's weights were trained with QuickGELU, so
they load with the ``-quickgelu`` names; open_clip's own trainings of the plain names use GELU.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import importlib_resources
import ml_collections

from modgap_jax import models
from modgap_jax.errors import ConfigError
from modgap_jax.models.resnet import feature_map_size

CONFIG_FILE = 'open_clip_config.json'  # The name open_clip gives the config it publishes beside weights.
# CLIP's image normalisation (per RGB channel, on pixels scaled to [0, 1]); open_clip's default.
# data.pipeline.CLIP_MEAN/CLIP_STD hold the same numbers; importing them here would load TFDS.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_TOP_KEYS = {'embed_dim', 'vision_cfg', 'text_cfg', 'quick_gelu'}
# Keys that do not change the towers' forward pass: the initial logit scale (the checkpoint has
# its own), its shape, dtype casting and output formatting.
_TOP_IGNORED = {'init_logit_scale', 'nonscalar_logit_scale', 'cast_dtype', 'output_dict'}
# Options our towers lack, with the only values they may take (absent counts as the first).
_TOP_FIXED = {'init_logit_bias': (None,), 'custom_text': (False,)}
_COMMON_FIXED = {
  'mlp_ratio': (4, 4.0),
  'ls_init_value': (None,),
  'final_ln_after_pool': (False,),
  'act_kwargs': (None,),
  'norm_kwargs': (None,),
  'block_type': (None, 'default'),
  'qk_norm': (False,),
  'scaled_cosine_attn': (False,),
  'scale_heads': (False,),
  'scale_attn_inner': (False,),
  'scale_attn': (False,),
  'scale_fc': (False,),
}
_VISION_KEYS = {'image_size', 'layers', 'width', 'head_width', 'patch_size'}
_VISION_FIXED = {
  **_COMMON_FIXED,
  'attentional_pool': (False,),
  'no_ln_pre': (False,),
  'pos_embed_type': ('learnable',),
  'pool_type': ('tok',),
  'timm_model_name': (None,),
}
# Dropout of patches acts in training only; the rest configure options fixed off above.
_VISION_IGNORED = {
  'patch_dropout',
  'output_tokens',
  'attn_pooler_queries',
  'attn_pooler_heads',
  'timm_model_pretrained',
  'timm_pool',
  'timm_proj',
  'timm_proj_bias',
  'timm_drop',
  'timm_drop_path',
}
_TEXT_KEYS = {'context_length', 'vocab_size', 'width', 'heads', 'layers'}
_TEXT_FIXED = {
  **_COMMON_FIXED,
  'embed_cls': (False,),
  'no_causal_mask': (False,),
  'pool_type': ('argmax',),
  'proj_bias': (False,),
  'proj_type': ('linear',),
  'hf_model_name': (None,),
}
# Tokenizer settings (the tokenizer is chosen separately) and options of towers fixed off above.
_TEXT_IGNORED = {
  'hf_tokenizer_name',
  'tokenizer_mode',
  'tokenizer_kwargs',
  'pad_id',
  'eos_id',
  'output_tokens',
  'hf_model_pretrained',
  'hf_proj_type',
  'hf_pooler_type',
}
_VISION_DEFAULTS = {'head_width': 64, 'image_size': 224, 'width': 768, 'patch_size': 16}
_TEXT_DEFAULTS = {'context_length': 77, 'vocab_size': 49408, 'width': 512, 'heads': 8, 'layers': 12}


def bundled_names() -> tuple[str, ...]:
  """The names of the configs shipped with the package, sorted."""
  files = importlib_resources.files('modgap_jax.pretrained') / 'configs'
  return tuple(sorted(f.name[: -len('.json')] for f in files.iterdir() if f.name.endswith('.json')))


def read_config(config: str | dict) -> tuple[dict, dict, str]:
  """Returns ``(model_cfg, preprocess_cfg, label)`` for a bundled name, a JSON path or a dict.

  A path may be a directory holding ``open_clip_config.json``. A JSON with a ``model_cfg``
  key is open_clip's published form; its ``preprocess_cfg`` (mean, std, …) is returned too,
  else ``{}``. ``label`` names the config in messages.
  """
  if isinstance(config, dict):
    raw, label = config, '(given as a dict)'
  elif isinstance(config, str) and config in bundled_names():
    resource = importlib_resources.files('modgap_jax.pretrained') / 'configs' / f'{config}.json'
    raw, label = json.loads(resource.read_text()), config
  elif isinstance(config, (str, os.PathLike)) and os.path.exists(config):
    path = os.path.join(config, CONFIG_FILE) if os.path.isdir(config) else os.fspath(config)
    if not os.path.isfile(path):
      raise ConfigError(f'config directory {config} has no {CONFIG_FILE}')
    try:
      with open(path, encoding='utf-8') as f:
        raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
      raise ConfigError(f'config {path} is not valid JSON: {error}') from None
    label = path
  else:
    raise ConfigError(
      f'config={config!r} is neither a bundled open_clip config nor an existing file; '
      f'choose one of {", ".join(bundled_names())}, or give the path of an open_clip config JSON'
    )
  if not isinstance(raw, dict):
    raise ConfigError(f'config {label} is not a JSON object')
  if 'model_cfg' in raw:
    return copy.deepcopy(raw['model_cfg']), copy.deepcopy(raw.get('preprocess_cfg') or {}), label
  return copy.deepcopy(raw), {}, label


def _check_keys(section: str, cfg: Any, shape_keys: set, fixed: dict, ignored: set, label: str) -> dict:
  """``cfg`` must be an object whose keys are known, with every ``fixed`` option at an allowed value."""
  if not isinstance(cfg, dict):
    raise ConfigError(f'config {label}: {section} must be a JSON object, not {cfg!r}')
  for key, value in cfg.items():
    field = f'{section}.{key}' if section else key
    if key in fixed:
      if value not in fixed[key]:
        raise ConfigError(
          f'config {label}: {field}={value!r} is not supported by these towers; only {fixed[key][0]!r} loads'
        )
    elif key not in shape_keys and key not in ignored:
      raise ConfigError(f'config {label}: {field} is not an open_clip option this loader knows')
  return cfg


def _int(field: str, value: Any, label: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f'config {label}: {field}={value!r} must be a positive integer')
  return value


def _square(field: str, value: Any, label: str) -> int:
  """open_clip allows [h, w] image sizes; our towers take square images."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ConfigError(f'config {label}: {field}={value!r} is not square; only square images load')
    value = value[0]
  return _int(field, value, label)


def to_model_config(config: str | dict, dtype: str = 'float32') -> tuple[ml_collections.ConfigDict, dict]:
  """Our ``model`` config for an open_clip config (see :func:`read_config`), and its preprocessing.

  Returns ``(model_cfg, preprocess)``; ``preprocess`` has the ``mean`` and ``std`` images
  are normalised with (CLIP's unless the config says otherwise) and the ``image_size``. The
  model config has every field of ``models.default_model_config()`` (the other image tower's
  entry keeps its default and is unused), plus ``quick_gelu``; ResNets use BatchNorm, as CLIP.
  """
  oc, preprocess_cfg, label = read_config(config)
  _check_keys('', oc, _TOP_KEYS, _TOP_FIXED, _TOP_IGNORED, label)
  for key in ('embed_dim', 'vision_cfg', 'text_cfg'):
    if key not in oc:
      raise ConfigError(f'config {label} lacks {key}')
  vision = {
    **_VISION_DEFAULTS,
    **_check_keys('vision_cfg', oc['vision_cfg'], _VISION_KEYS, _VISION_FIXED, _VISION_IGNORED, label),
  }
  text = {**_TEXT_DEFAULTS, **_check_keys('text_cfg', oc['text_cfg'], _TEXT_KEYS, _TEXT_FIXED, _TEXT_IGNORED, label)}
  quick_gelu = oc.get('quick_gelu', False)
  if not isinstance(quick_gelu, bool):
    raise ConfigError(f'config {label}: quick_gelu={quick_gelu!r} must be true or false')

  cfg = models.default_model_config()
  cfg.dtype = dtype
  cfg.quick_gelu = quick_gelu
  cfg.embed_dim = _int('embed_dim', oc['embed_dim'], label)
  cfg.image_size = _square('vision_cfg.image_size', vision['image_size'], label)
  width = _int('vision_cfg.width', vision['width'], label)
  head_width = _int('vision_cfg.head_width', vision['head_width'], label)
  layers = vision['layers']
  if isinstance(layers, (list, tuple)):
    if len(layers) != 4:
      raise ConfigError(f'config {label}: vision_cfg.layers={layers!r} must have 4 stages, as ModifiedResNet')
    cfg.image_tower = 'resnet'
    channels = 32 * width  # The last stage's channels: what the attention pool attends over.
    if channels % head_width:
      raise ConfigError(f'config {label}: vision_cfg.head_width={head_width} must divide 32*width={channels}')
    if feature_map_size(cfg.image_size, 4) != cfg.image_size // 32:
      raise ConfigError(
        f'config {label}: vision_cfg.image_size={cfg.image_size} gives a ModifiedResNet a feature map that is '
        f'not the image_size//32 = {cfg.image_size // 32} positions its attention pool has'
      )
    cfg.resnet = dict(
      layers=tuple(_int(f'vision_cfg.layers[{i}]', n, label) for i, n in enumerate(layers)),
      width=width,
      heads=channels // head_width,
      norm='batch',
      axis_name=None,
    )
  else:
    cfg.image_tower = 'vit'
    if width % head_width:
      raise ConfigError(f'config {label}: vision_cfg.head_width={head_width} must divide vision_cfg.width={width}')
    cfg.vit = dict(
      patch_size=_int('vision_cfg.patch_size', vision['patch_size'], label),
      width=width,
      depth=_int('vision_cfg.layers', layers, label),
      heads=width // head_width,
    )
  cfg.vocab_size = _int('text_cfg.vocab_size', text['vocab_size'], label)
  cfg.context_length = _int('text_cfg.context_length', text['context_length'], label)
  cfg.text = dict(
    width=_int('text_cfg.width', text['width'], label),
    depth=_int('text_cfg.layers', text['layers'], label),
    heads=_int('text_cfg.heads', text['heads'], label),
  )
  models.check_model_config(cfg)
  preprocess = {
    'mean': tuple(float(m) for m in preprocess_cfg.get('mean', OPENAI_MEAN)),
    'std': tuple(float(s) for s in preprocess_cfg.get('std', OPENAI_STD)),
    'image_size': cfg.image_size,
  }
  return cfg, preprocess


def from_model_config(model_cfg: ml_collections.ConfigDict) -> dict:
  """The open_clip config (``model_cfg`` form) of one of our model configs; ConfigError if it has none.

  open_clip's ModifiedResNet has four stages of BatchNorm and an attention pool over a
  ``image_size/32``-sided map, and its heads are set through ``head_width``, so a ResNet must
  match all of that; ViTs and text towers need only heads that divide their widths.
  """
  cfg = model_cfg
  models.check_model_config(cfg)
  if cfg.image_tower == 'resnet':
    r = cfg.resnet
    if r.norm != 'batch':
      raise ConfigError(f"model.resnet.norm={r.norm!r} has no open_clip counterpart; only 'batch' exports")
    if len(r.layers) != 4:
      raise ConfigError(f'model.resnet.layers={tuple(r.layers)} has no open_clip counterpart; it needs 4 stages')
    if feature_map_size(cfg.image_size, 4) != cfg.image_size // 32:
      raise ConfigError(
        f'model.image_size={cfg.image_size} has no open_clip ModifiedResNet: its feature map is not image_size//32'
      )
    vision = {
      'image_size': cfg.image_size,
      'layers': list(r.layers),
      'width': r.width,
      'head_width': 32 * r.width // r.heads,
      'patch_size': None,
    }
  else:
    v = cfg.vit
    vision = {
      'image_size': cfg.image_size,
      'layers': v.depth,
      'width': v.width,
      'head_width': v.width // v.heads,
      'patch_size': v.patch_size,
    }
  t = cfg.text
  return {
    'embed_dim': cfg.embed_dim,
    'quick_gelu': bool(cfg.get('quick_gelu', True)),
    'vision_cfg': vision,
    'text_cfg': {
      'context_length': cfg.context_length,
      'vocab_size': cfg.vocab_size,
      'width': t.width,
      'heads': t.heads,
      'layers': t.depth,
    },
  }
