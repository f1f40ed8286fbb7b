"""Pretrained CLIP in and out: open_clip and OpenAI checkpoints in our Flax towers, and back.

Our towers have CLIP's architecture (MATH.md §5.1), so a released checkpoint loads by renaming
and re-laying out its tensors (:mod:`.layout`); the shapes come from an open_clip model config
(:mod:`.configs`, which bundles CLIP's released ones). Nothing here downloads anything::

  from modgap_jax import pretrained
  loaded = pretrained.load('ViT-B-32-openai/open_clip_model.safetensors', 'ViT-B-32-quickgelu')
  image_emb = loaded.model.apply(loaded.variables, images, method='encode_image')  # NHWC, normalised
  text_emb = loaded.model.apply(loaded.variables, tokens, method='encode_text')
  pretrained.export('my_run_open_clip/', variables, model_cfg)  # open_clip: 'local-dir:my_run_open_clip'

Images are NHWC float32, already resized to ``loaded.preprocess['image_size']`` and
normalised by its ``mean`` and ``std``; tokens come from ``data.text.load_clip_tokenizer``.

The temperature. open_clip stores the logit scale s = log β (OpenAI's released models have
β = 100). It becomes our leaf ν = ν(β) of the run's reparameterisation (MATH.md §1): for the
default ``exp``, β = e^ν, so ν = s exactly; :func:`export` writes s = log β(ν) back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import ml_collections
import numpy as np

from modgap_jax import models
from modgap_jax.errors import ConfigError
from modgap_jax.pretrained import configs, files, layout, safetensors_io
from modgap_jax.pretrained.configs import (
  CONFIG_FILE,
  OPENAI_MEAN,
  OPENAI_STD,
  bundled_names,
  from_model_config,
  to_model_config,
)
from modgap_jax.temperature import Reparam

WEIGHTS_FILE = 'open_clip_model.safetensors'  # What export writes, and what open_clip looks for first.


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A loaded checkpoint.

  Attributes:
    model: the :class:`models.CLIP` module (``models.create_model(model_config, nu)``).
    variables: ``{'params': …}`` (plus ``'batch_stats'`` for ResNets), float32 NumPy leaves;
      ``params['temperature']['nu']`` holds ν for the logit scale.
    model_config: our ``model`` config for these shapes (ResNets with BatchNorm).
    preprocess: ``mean``, ``std`` (RGB, for pixels in [0, 1]) and ``image_size``.
    logit_scale: the checkpoint's log β.
  """

  model: models.CLIP
  variables: dict
  model_config: ml_collections.ConfigDict
  preprocess: dict
  logit_scale: float


def _resolve(checkpoint: str, config) -> tuple[str, object]:
  """The weight file, and the config: the one given, else the ``open_clip_config.json`` beside the weights."""
  checkpoint = os.fspath(checkpoint)
  if os.path.isdir(checkpoint):
    weights, directory = files.find_weights(checkpoint), checkpoint
  else:
    weights, directory = checkpoint, os.path.dirname(checkpoint) or '.'
  if config is None:
    beside = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(beside):
      raise ConfigError(
        f'checkpoint {checkpoint} has no {CONFIG_FILE} beside it; name its config: one of '
        f'{", ".join(bundled_names())}, or the path of an open_clip config JSON'
      )
    config = beside
  return weights, config


def nu_from_logit_scale(logit_scale: float, reparam: Reparam | None = None) -> np.float32:
  """ν with β(ν) = e^s for the logit scale s; for ``exp`` that is s itself, with no rounding."""
  reparam = reparam or Reparam()
  if reparam.name == 'exp':
    return np.float32(logit_scale)
  return np.float32(reparam.nu(np.float32(math.exp(logit_scale))))


def logit_scale_from_nu(nu, reparam: Reparam | None = None) -> np.float32:
  """The logit scale s = log β(ν); the inverse of :func:`nu_from_logit_scale`."""
  reparam = reparam or Reparam()
  if reparam.name == 'exp':
    return np.float32(nu)
  return np.float32(math.log(float(reparam.beta(np.float32(nu)))))


def load(
  checkpoint: str, config: str | dict | None = None, *, reparam: Reparam | None = None, dtype: str = 'float32'
) -> Pretrained:
  """Loads an open_clip or OpenAI checkpoint into our towers.

  Args:
    checkpoint: a weight file (``.safetensors``, or a torch ``.bin``/``.pt`` state dict when
      torch is installed), or a directory holding one (as open_clip publishes them, beside
      ``open_clip_config.json``).
    config: a bundled config name (:func:`bundled_names`), the path of an open_clip config
      JSON (or of a directory holding ``open_clip_config.json``), or its dict; ``None`` reads
      the ``open_clip_config.json`` beside the weights.
    reparam: the β(ν) map the ν leaf is written for; ``exp`` (CLIP's) by default.
    dtype: the model's compute dtype, 'float32' or 'bfloat16' (parameters stay float32).

  Raises:
    ConfigError: one line, for an unknown config, a refused or unreadable file, or a checkpoint
      that does not fit the config (naming the first missing or misshapen tensor).
  """
  weights, config = _resolve(checkpoint, config)
  model_cfg, preprocess = to_model_config(config, dtype)
  state = files.read_state_dict(weights)
  variables = layout.to_variables(state, model_cfg, weights)
  if layout.LOGIT_SCALE not in state:
    raise ConfigError(f'checkpoint {weights} lacks tensor {layout.LOGIT_SCALE!r}: it is truncated or not a CLIP model')
  scale = np.asarray(state[layout.LOGIT_SCALE], np.float32)
  if scale.size != 1:
    raise ConfigError(
      f'checkpoint {weights}: tensor {layout.LOGIT_SCALE!r} has shape {scale.shape}, but it must be a scalar'
    )
  logit_scale = float(scale.reshape(()))
  nu = nu_from_logit_scale(logit_scale, reparam)
  variables['params']['temperature'] = {'nu': np.asarray(nu, np.float32)}  # 0-d, as the model's ν
  model = models.create_model(model_cfg, float(nu))
  return Pretrained(model, variables, model_cfg, preprocess, logit_scale)


def state_dict(
  variables: dict, model_cfg: ml_collections.ConfigDict, reparam: Reparam | None = None
) -> dict[str, np.ndarray]:
  """The open_clip state dict of our variables (``{'params': …, 'batch_stats': …}``), ``logit_scale`` included."""
  out = layout.to_state_dict(variables, model_cfg)
  out[layout.LOGIT_SCALE] = logit_scale_from_nu(np.asarray(variables['params']['temperature']['nu']), reparam)
  return out


def export(
  directory: str,
  variables: dict,
  model_cfg: ml_collections.ConfigDict,
  *,
  reparam: Reparam | None = None,
  preprocess: dict | None = None,
) -> tuple[str, str]:
  """Writes our variables as an open_clip model directory; returns the (weights, config) paths.

  The directory gets ``open_clip_model.safetensors`` and ``open_clip_config.json``
  (``{"model_cfg": …, "preprocess_cfg": …}``), the layout open_clip publishes, so that
  ``open_clip.create_model('local-dir:<directory>')`` builds the model with these weights, and
  :func:`load` reads it back. ``preprocess`` may give the ``mean`` and ``std`` to record
  (CLIP's by default). The model config must have an open_clip counterpart
  (:func:`configs.from_model_config`); that is checked before anything is written.
  """
  model_cfg_oc = from_model_config(model_cfg)
  tensors = state_dict(variables, model_cfg, reparam)
  preprocess = preprocess or {}
  preprocess_cfg = {
    'mean': list(preprocess.get('mean', OPENAI_MEAN)),
    'std': list(preprocess.get('std', OPENAI_STD)),
  }
  os.makedirs(directory, exist_ok=True)
  weights = os.path.join(directory, WEIGHTS_FILE)
  config = os.path.join(directory, CONFIG_FILE)
  safetensors_io.write(weights, tensors, metadata={'format': 'pt'})
  with open(config, 'w', encoding='utf-8') as f:
    json.dump({'model_cfg': model_cfg_oc, 'preprocess_cfg': preprocess_cfg}, f, indent=2)
    f.write('\n')
  return weights, config


__all__ = [
  'CONFIG_FILE',
  'OPENAI_MEAN',
  'OPENAI_STD',
  'Pretrained',
  'WEIGHTS_FILE',
  'bundled_names',
  'configs',
  'export',
  'files',
  'from_model_config',
  'layout',
  'load',
  'logit_scale_from_nu',
  'nu_from_logit_scale',
  'safetensors_io',
  'state_dict',
  'to_model_config',
]
