"""A run that starts from a pretrained checkpoint: the config fields ``init_from`` and ``pretrained_config``.

The run setup (:mod:`modgap_jax.run_setup`) calls into this module, so that the trainer, a
study's cells, the measure task and the analysis of a run directory all see one resolution:

- :func:`resolve_config`, first thing in ``run_setup.check_config``: with ``init_from`` set,
  ``config.model`` becomes the checkpoint's, translated from its open_clip config
  (``pretrained.to_model_config``), and ``dataset.mean`` / ``dataset.std`` its
  preprocessing. Of the config's own model fields only the compute ``dtype`` and the ResNet's
  BatchNorm ``axis_name`` are kept: init_from overrides every other ``model.*`` field, and the
  run's ``config.json`` records what it resolved to.
- :func:`check_vocab_file`: ``dataset.tokenizer='clip'`` (CLIP's own BPE, which released text
  towers read) needs ``dataset.vocab_file``.
- :func:`initial_state`, from ``run_setup.initial_state``: the train state before step 1 holds
  the checkpoint's parameters (and BatchNorm statistics) instead of a random initialisation,
  with the optimizer state initialised on them. A resumed run restores its own checkpoint
  over this state, as over a random one.

The temperature leaf ν (MATH.md §1). Where ν is learned (baseline, ``tr``, ``slrt``, the
swaps) it starts at the checkpoint's logit scale s, written for the run's reparameterisation:
β(ν₀) = e^s (``pretrained.nu_from_logit_scale``; ν₀ = s for ``exp``). Where the method fixes
τ (``flt``) or schedules it (``ts``), τ is the method's: ν₀ = ν(τ₀), exactly as from a random
start, since otherwise every ``flt`` value would train at the checkpoint's τ.
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from modgap_jax import pretrained
from modgap_jax import train_step as train_step_lib
from modgap_jax.errors import ConfigError

VOCAB_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"  # CLIP's vocabulary, as open_clip and OpenAI's CLIP ship it


def init_from(config: ml_collections.ConfigDict) -> str:
  """The checkpoint a run starts from ('' for a random start, and in configs older than the field)."""
  return str(config.get("init_from", "") or "")


def _config_source(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(what ``to_model_config`` reads, the field to name in errors) for the run's checkpoint."""
  named = str(config.get("pretrained_config", "") or "")
  if named:
    return named, "pretrained_config"
  path = init_from(config)
  directory = path if os.path.isdir(path) else (os.path.dirname(path) or ".")
  if not os.path.isfile(os.path.join(directory, pretrained.CONFIG_FILE)):
    raise ConfigError(
      f"init_from={path!r} has no {pretrained.CONFIG_FILE} beside it; set pretrained_config to its open_clip "
      f"config: one of {', '.join(pretrained.bundled_names())}, or the path of an open_clip config JSON"
    )
  return directory, "init_from"


def resolve_config(config: ml_collections.ConfigDict) -> None:
  """With ``init_from`` set: the checkpoint's model config and preprocessing, in place (see the module docstring).

  Reads only the open_clip config (a small JSON), not the weights; idempotent.
  """
  path = init_from(config)
  if not path:
    return
  if not os.path.exists(path):
    raise ConfigError(
      f"init_from={path!r}: no such file or directory; give an open_clip checkpoint (open_clip_model.safetensors, "
      "or the directory holding it beside open_clip_config.json), downloaded beforehand (docs/pretrained.md)"
    )
  source, field = _config_source(config)
  try:
    model_cfg, preprocess = pretrained.to_model_config(source, str(config.model.get("dtype", "float32")))
  except ConfigError as error:
    raise ConfigError(f"{field}={source!r}: {error}") from None
  if model_cfg.image_tower == "resnet" and "resnet" in config.model:
    model_cfg.resnet.axis_name = config.model.resnet.get("axis_name", None)  # how the trainer syncs BatchNorm
  config.model = model_cfg
  config.dataset.mean = tuple(preprocess["mean"])
  config.dataset.std = tuple(preprocess["std"])


def installed_vocab_file() -> str | None:
  """CLIP's vocabulary file inside an installed open_clip package, or None (open_clip is not imported)."""
  spec = importlib.util.find_spec("open_clip")
  if spec is None or not spec.origin:
    return None
  path = os.path.join(os.path.dirname(spec.origin), VOCAB_FILE_NAME)
  return path if os.path.isfile(path) else None


def check_vocab_file(dataset_cfg: ml_collections.ConfigDict) -> str:
  """``dataset.vocab_file`` for ``dataset.tokenizer='clip'``: an existing file, or a one-line ConfigError."""
  path = str(dataset_cfg.get("vocab_file", "") or "")
  if path and os.path.isfile(path):
    return path
  found = installed_vocab_file()
  where = f"open_clip's copy is {found}" if found else "it ships with open_clip (in its package) and OpenAI's CLIP"
  problem = f"dataset.vocab_file={path!r} does not exist" if path else "dataset.vocab_file is empty"
  raise ConfigError(f"dataset.tokenizer='clip' needs CLIP's vocabulary file {VOCAB_FILE_NAME} and {problem}; {where}")


def load_checkpoint(config: ml_collections.ConfigDict, reparam) -> pretrained.Pretrained:
  """The run's checkpoint, loaded for its config and ν map; a one-line ConfigError names the first
  missing or misshapen tensor of a checkpoint that does not fit its config, or a truncated file."""
  path = init_from(config)
  if not path:
    raise ConfigError("init_from is empty; give the open_clip checkpoint to start from")
  resolve_config(config)  # a no-op on a resolved config: here for callers that skipped check_config
  named = str(config.get("pretrained_config", "") or "") or None
  return pretrained.load(path, named, reparam=reparam, dtype=str(config.model.get("dtype", "float32")))


def initial_state(config: ml_collections.ConfigDict, training, key: jax.Array) -> train_step_lib.TrainState:
  """The train state before step 1 from the checkpoint (see the module docstring for ν).

  Args:
    config: the run's config, resolved.
    training: the run's ``data_modes.Training`` (model, optimizer, temperature spec).
    key: the run's key; split as ``train_step.init_state`` splits it, so that the steps draw
      the randomness a random start with this key would.
  """
  loaded = load_checkpoint(config, training.spec.reparam)
  params = loaded.variables["params"]
  if training.spec.mode != "learned":  # the method's τ, not the checkpoint's
    params["temperature"]["nu"] = np.asarray(training.spec.nu_init, np.float32)
  params = jax.tree.map(jnp.asarray, params)
  _, state_rng = jax.random.split(key)
  return train_step_lib.TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    batch_stats=jax.tree.map(jnp.asarray, loaded.variables.get("batch_stats", {})),
    opt_state=training.tx.init(params),
    rng=state_rng,
    nonfinite_skips=jnp.zeros([], jnp.int32),
  )
