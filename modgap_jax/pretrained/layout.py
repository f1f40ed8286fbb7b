"""Where each tensor of an open_clip state dict lives in our variables, and how its layout differs.

One :class:`Rule` per open_clip tensor names its key, the leaves of our variables it fills
(``('params', 'image', …)`` or ``('batch_stats', …)``) and a :class:`Converter` between the
two layouts. The differences are all transposes and reshapes:

- ``linear``: a torch ``Linear`` weight is [out, in], a flax ``Dense`` kernel [in, out];
- ``conv``: a torch conv weight is [out, in, kh, kw] (OIHW), ours [kh, kw, in, out] (HWIO);
- ``heads_in`` / ``heads_bias``: an attention in-projection [h·d, in] becomes flax's
  ``DenseGeneral`` kernel [in, h, d] (head k owns rows k·d … k·d+d−1, as torch splits them),
  its bias [h·d] becomes [h, d];
- ``packed_in`` / ``packed_bias``: ``nn.MultiheadAttention``'s ``in_proj_weight`` [3·h·d, in]
  stacks the query, key and value projections, in that order;
- ``heads_out``: an out-projection [out, h·d] becomes [h, d, out];
- ``copy``: embeddings, LayerNorm and BatchNorm vectors, and the two output projections
  (open_clip multiplies ``x @ proj`` by a [width, embed] matrix, as a flax kernel does).

The same rules run both ways (:func:`to_variables`, :func:`to_state_dict`), and
:func:`rules` is checked against the model's own variable tree, so a leaf the rules miss or
invent fails loudly rather than being left at its initial value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from modgap_jax import models
from modgap_jax.errors import ConfigError

Path = tuple[str, ...]
Shape = tuple[int, ...]

LOGIT_SCALE = 'logit_scale'
# Tensors open_clip and OpenAI checkpoints may carry that hold no weights: BatchNorm's update
# counter, and the scalars OpenAI's TorchScript exports keep beside the weights.
IGNORED_SUFFIXES = ('num_batches_tracked',)
IGNORED_KEYS = ('attn_mask', 'input_resolution', 'context_length', 'vocab_size')


@dataclasses.dataclass(frozen=True)
class Converter:
  """Maps one open_clip tensor to our leaves and back; ``theirs_shape`` from our leaves' shapes."""

  to_ours: Callable[[np.ndarray, tuple[Shape, ...]], tuple[np.ndarray, ...]]
  to_theirs: Callable[[tuple[np.ndarray, ...]], np.ndarray]
  theirs_shape: Callable[[tuple[Shape, ...]], Shape]


def _heads_in(w, shape):
  return w.T.reshape(shape)


def _heads_in_back(k):
  return k.reshape(k.shape[0], -1).T


CONVERTERS = {
  'copy': Converter(lambda a, s: (a,), lambda p: p[0], lambda s: s[0]),
  'linear': Converter(lambda a, s: (a.T,), lambda p: p[0].T, lambda s: s[0][::-1]),
  'conv': Converter(
    lambda a, s: (a.transpose(2, 3, 1, 0),),
    lambda p: p[0].transpose(3, 2, 0, 1),
    lambda s: (s[0][3], s[0][2], *s[0][:2]),
  ),
  'heads_in': Converter(
    lambda a, s: (_heads_in(a, s[0]),), lambda p: _heads_in_back(p[0]), lambda s: (math.prod(s[0][1:]), s[0][0])
  ),
  'heads_bias': Converter(lambda a, s: (a.reshape(s[0]),), lambda p: p[0].reshape(-1), lambda s: (math.prod(s[0]),)),
  'packed_in': Converter(
    lambda a, s: tuple(_heads_in(part, shape) for part, shape in zip(np.split(a, 3), s)),
    lambda p: np.concatenate([_heads_in_back(k) for k in p]),
    lambda s: (3 * math.prod(s[0][1:]), s[0][0]),
  ),
  'packed_bias': Converter(
    lambda a, s: tuple(part.reshape(shape) for part, shape in zip(np.split(a, 3), s)),
    lambda p: np.concatenate([b.reshape(-1) for b in p]),
    lambda s: (3 * math.prod(s[0]),),
  ),
  'heads_out': Converter(
    lambda a, s: (a.T.reshape(s[0]),),
    lambda p: p[0].reshape(-1, p[0].shape[-1]).T,
    lambda s: (s[0][2], s[0][0] * s[0][1]),
  ),
}


@dataclasses.dataclass(frozen=True)
class Rule:
  """open_clip tensor ``key`` ↔ our leaves ``paths`` through ``CONVERTERS[kind]``."""

  key: str
  paths: tuple[Path, ...]
  kind: str


def _linear(key: str, path: Path) -> list[Rule]:
  """A torch Linear with bias ↔ a flax Dense."""
  return [
    Rule(f'{key}.weight', (('params', *path, 'kernel'),), 'linear'),
    Rule(f'{key}.bias', (('params', *path, 'bias'),), 'copy'),
  ]


def _layer_norm(key: str, path: Path) -> list[Rule]:
  return [
    Rule(f'{key}.weight', (('params', *path, 'scale'),), 'copy'),
    Rule(f'{key}.bias', (('params', *path, 'bias'),), 'copy'),
  ]


def _batch_norm(key: str, path: Path) -> list[Rule]:
  return [
    Rule(f'{key}.weight', (('params', *path, 'scale'),), 'copy'),
    Rule(f'{key}.bias', (('params', *path, 'bias'),), 'copy'),
    Rule(f'{key}.running_mean', (('batch_stats', *path, 'mean'),), 'copy'),
    Rule(f'{key}.running_var', (('batch_stats', *path, 'var'),), 'copy'),
  ]


def _conv(key: str, path: Path) -> list[Rule]:
  return [Rule(f'{key}.weight', (('params', *path, 'kernel'),), 'conv')]


def _transformer(key: str, path: Path, depth: int) -> list[Rule]:
  """open_clip's ``Transformer`` (``resblocks.i``) ↔ our ``Transformer`` (``block{i}``)."""
  out = []
  for i in range(depth):
    k, p = f'{key}.resblocks.{i}', (*path, f'block{i}')
    attn = ('params', *p, 'attn')
    out += _layer_norm(f'{k}.ln_1', (*p, 'ln_1'))
    out.append(
      Rule(f'{k}.attn.in_proj_weight', tuple((*attn, n, 'kernel') for n in ('query', 'key', 'value')), 'packed_in')
    )
    out.append(
      Rule(f'{k}.attn.in_proj_bias', tuple((*attn, n, 'bias') for n in ('query', 'key', 'value')), 'packed_bias')
    )
    out.append(Rule(f'{k}.attn.out_proj.weight', ((*attn, 'out', 'kernel'),), 'heads_out'))
    out.append(Rule(f'{k}.attn.out_proj.bias', ((*attn, 'out', 'bias'),), 'copy'))
    out += _layer_norm(f'{k}.ln_2', (*p, 'ln_2'))
    out += _linear(f'{k}.mlp.c_fc', (*p, 'mlp', 'fc'))
    out += _linear(f'{k}.mlp.c_proj', (*p, 'mlp', 'proj'))
  return out


def _resnet(r: ml_collections.ConfigDict) -> list[Rule]:
  """open_clip's ModifiedResNet (``visual.*``) ↔ our ``ModifiedResNet`` (``image``)."""
  out = []
  for i in (1, 2, 3):
    out += _conv(f'visual.conv{i}', ('image', f'stem_conv{i}'))
    out += _batch_norm(f'visual.bn{i}', ('image', f'stem_norm{i}'))
  for stage, blocks in enumerate(r.layers, start=1):
    for block in range(blocks):
      k, p = f'visual.layer{stage}.{block}', ('image', f'stage{stage}_block{block}')
      for i in (1, 2, 3):
        out += _conv(f'{k}.conv{i}', (*p, f'conv{i}'))
        out += _batch_norm(f'{k}.bn{i}', (*p, f'norm{i}'))
      # open_clip's first block of every stage has a downsample branch: a stride, or (stage 1)
      # the 4x channel expansion, as in our Bottleneck's condition.
      if block == 0:
        out += _conv(f'{k}.downsample.0', (*p, 'downsample_conv'))
        out += _batch_norm(f'{k}.downsample.1', (*p, 'downsample_norm'))
  attn = ('params', 'image', 'attnpool', 'attn')
  out.append(
    Rule('visual.attnpool.positional_embedding', (('params', 'image', 'attnpool', 'positional_embedding'),), 'copy')
  )
  for theirs, ours in (('q_proj', 'query'), ('k_proj', 'key'), ('v_proj', 'value')):
    out.append(Rule(f'visual.attnpool.{theirs}.weight', ((*attn, ours, 'kernel'),), 'heads_in'))
    out.append(Rule(f'visual.attnpool.{theirs}.bias', ((*attn, ours, 'bias'),), 'heads_bias'))
  out.append(Rule('visual.attnpool.c_proj.weight', ((*attn, 'out', 'kernel'),), 'heads_out'))
  out.append(Rule('visual.attnpool.c_proj.bias', ((*attn, 'out', 'bias'),), 'copy'))
  return out


def _vit(v: ml_collections.ConfigDict) -> list[Rule]:
  """open_clip's VisionTransformer (``visual.*``) ↔ our ``VisionTransformer`` (``image``)."""
  out = [
    Rule('visual.class_embedding', (('params', 'image', 'class_embedding'),), 'copy'),
    Rule('visual.positional_embedding', (('params', 'image', 'positional_embedding'),), 'copy'),
    Rule('visual.proj', (('params', 'image', 'projection', 'kernel'),), 'copy'),
  ]
  out += _conv('visual.conv1', ('image', 'patch_embedding'))
  out += _layer_norm('visual.ln_pre', ('image', 'ln_pre'))
  out += _transformer('visual.transformer', ('image', 'transformer'), v.depth)
  out += _layer_norm('visual.ln_post', ('image', 'ln_post'))
  return out


def _text(t: ml_collections.ConfigDict) -> list[Rule]:
  """open_clip CLIP's text tower (top-level keys) ↔ our ``TextTransformer`` (``text``)."""
  out = [
    Rule('positional_embedding', (('params', 'text', 'positional_embedding'),), 'copy'),
    Rule('text_projection', (('params', 'text', 'projection', 'kernel'),), 'copy'),
    Rule('token_embedding.weight', (('params', 'text', 'token_embedding', 'embedding'),), 'copy'),
  ]
  out += _transformer('transformer', ('text', 'transformer'), t.depth)
  out += _layer_norm('ln_final', ('text', 'ln_final'))
  return out


def rules(model_cfg: ml_collections.ConfigDict) -> list[Rule]:
  """Every tensor of the open_clip state dict but ``logit_scale``, image tower first."""
  image = _resnet(model_cfg.resnet) if model_cfg.image_tower == 'resnet' else _vit(model_cfg.vit)
  return image + _text(model_cfg.text)


def variable_shapes(model_cfg: ml_collections.ConfigDict) -> dict[Path, Shape]:
  """The shape of every leaf of ``create_model(model_cfg).init(...)``, temperature excluded, by path."""
  model = models.create_model(model_cfg, 0.0)
  images = jax.ShapeDtypeStruct((1, model_cfg.image_size, model_cfg.image_size, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, model_cfg.context_length), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), images, tokens)
  flat = traverse_util.flatten_dict(
    jax.tree_util.tree_map(lambda x: x.shape, abstract, is_leaf=lambda x: hasattr(x, 'shape'))
  )
  return {path: tuple(shape) for path, shape in flat.items() if path[:2] != ('params', 'temperature')}


def checked_rules(model_cfg: ml_collections.ConfigDict) -> tuple[list[Rule], dict[Path, Shape]]:
  """:func:`rules` and :func:`variable_shapes`, after checking that the rules fill every leaf once."""
  shapes = variable_shapes(model_cfg)
  table = rules(model_cfg)
  filled = [path for rule in table for path in rule.paths]
  if sorted(filled) != sorted(shapes):
    missing, extra = set(shapes) - set(filled), set(filled) - set(shapes)
    raise AssertionError(
      f'layout rules out of step with the model: unfilled {sorted(missing)[:3]}, unknown {sorted(extra)[:3]}'
    )
  return table, shapes


def to_variables(state_dict: Mapping[str, np.ndarray], model_cfg: ml_collections.ConfigDict, label: str) -> dict:
  """Our variables (``params`` without the temperature, plus ``batch_stats`` for ResNets) from a state dict.

  Raises a one-line ConfigError naming the first tensor (in :func:`rules` order) that is
  missing or has another shape than ``model_cfg`` gives it, or else the first tensor that
  has no place in the model. ``label`` names the checkpoint in those messages.
  """
  table, shapes = checked_rules(model_cfg)
  known = {rule.key for rule in table} | {LOGIT_SCALE, *IGNORED_KEYS}
  for rule in table:
    if rule.key not in state_dict:
      raise ConfigError(f'checkpoint {label} lacks tensor {rule.key!r}: it is truncated or not of this model config')
    want = CONVERTERS[rule.kind].theirs_shape(tuple(shapes[p] for p in rule.paths))
    have = tuple(np.shape(state_dict[rule.key]))
    if have != tuple(want):
      raise ConfigError(
        f'checkpoint {label}: tensor {rule.key!r} has shape {have}, but the model config needs {tuple(want)}'
      )
  for key in state_dict:
    if key not in known and not key.endswith(IGNORED_SUFFIXES):
      raise ConfigError(f'checkpoint {label} has tensor {key!r}, which the model config has no place for')
  flat = {}
  for rule in table:
    value = np.asarray(state_dict[rule.key], dtype=np.float32)
    parts = CONVERTERS[rule.kind].to_ours(value, tuple(shapes[p] for p in rule.paths))
    for path, part in zip(rule.paths, parts):
      flat[path] = np.array(part, order='C')
  return traverse_util.unflatten_dict(flat)


def to_state_dict(variables: Mapping, model_cfg: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The open_clip state dict (float32, without ``logit_scale``) of our variables; inverse of :func:`to_variables`.

  BatchNorm's ``num_batches_tracked`` counters, which open_clip's modules keep but never read
  (their momentum is fixed), are written as 0 so that open_clip's strict loading finds them.
  """
  table, shapes = checked_rules(model_cfg)
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)))
  out = {}
  for rule in table:
    for path in rule.paths:
      if path not in flat or tuple(np.shape(flat[path])) != shapes[path]:
        raise ConfigError(f'variables do not match the model config at {"/".join(path)}')
    parts = tuple(np.asarray(flat[p], dtype=np.float32) for p in rule.paths)
    out[rule.key] = np.array(CONVERTERS[rule.kind].to_theirs(parts), order='C')
    if rule.key.endswith('.running_var'):
      out[rule.key[: -len('running_var')] + 'num_batches_tracked'] = np.zeros((), np.int64)
  return out
