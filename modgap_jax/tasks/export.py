"""``config.task = 'export'``: a trained run's weights as an open_clip checkpoint.

``configs/pretrained.py:export`` (docs/pretrained.md). Reads the run directory ``run_dir`` as
the analyze task reads one (``run_setup.read_run_config``, and its latest checkpoint,
read-only) and writes into ``workdir`` the layout open_clip publishes (``pretrained.export``):

- ``open_clip_model.safetensors``: the towers, and ν as the logit scale s = log β(ν) of the
  run's reparameterisation (MATH.md §1);
- ``open_clip_config.json``: the towers' open_clip config and the run's image normalisation;
- ``tokenizer.json``: the run's tokenizer, whose ids the text tower reads.

open_clip loads it with ``open_clip.create_model('local-dir:<workdir>')``, and this package
with ``pretrained.load('<workdir>')`` or ``--config.init_from=<workdir>``. A run trained with
CLIP's tokenizer (``dataset.tokenizer='clip'``, as a fine-tuned checkpoint is) pairs with
open_clip's own tokenizer; for any other a line says that it does not.

Everything is checked before anything is written: the run's config and checkpoint, and that
its model has an open_clip counterpart (a GroupNorm ResNet, the from-scratch default, does
not: ``model.resnet.norm`` is named).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import ml_collections

from modgap_jax import pretrained, run_setup, temperature
from modgap_jax.errors import ConfigError
from modgap_jax.tasks.analyze_inputs import restore_variables


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Writes the open_clip checkpoint of ``config.run_dir`` into ``workdir``; returns its paths and logit scale."""
  run_dir = str(config.run_dir or "")
  if not run_dir:
    raise ConfigError("run_dir is empty; give the workdir of a trained run (--config.run_dir=runs/NAME)")
  if not os.path.isdir(run_dir):
    raise ConfigError(f"run_dir={run_dir!r}: no such directory")
  if os.path.realpath(run_dir) == os.path.realpath(workdir):
    raise ConfigError(f"--workdir={workdir} is the run directory itself; export into another directory")
  run_config = run_setup.read_run_config(run_dir)
  try:
    pretrained.from_model_config(run_config.model)
  except ConfigError as error:
    raise ConfigError(f"run {run_dir}: {error}") from None
  reparam = temperature.spec_from_config(run_config.temperature, schedule_duration=1).reparam
  variables = restore_variables(run_dir)
  preprocess = {"mean": tuple(run_config.dataset.mean), "std": tuple(run_config.dataset.std)}
  weights, config_path = pretrained.export(workdir, variables, run_config.model, reparam=reparam, preprocess=preprocess)

  tokenizer = os.path.join(run_dir, run_setup.TOKENIZER_FILE)
  kind = None
  if os.path.isfile(tokenizer):
    shutil.copyfile(tokenizer, os.path.join(workdir, run_setup.TOKENIZER_FILE))
    with open(tokenizer) as f:
      kind = json.load(f).get("kind")
  print(f"exported {run_dir} to {weights}; open_clip: open_clip.create_model('local-dir:{workdir}')")
  if kind != "clip_bpe":
    print(
      f"note: the run's tokenizer is {kind!r}, not CLIP's: its text tower reads the ids of the tokenizer.json "
      "copied beside the weights, which open_clip's tokenizer does not give"
    )
  logit_scale = float(pretrained.logit_scale_from_nu(variables["params"]["temperature"]["nu"], reparam))
  return {"weights": weights, "config": config_path, "logit_scale": logit_scale, "tokenizer": kind}
