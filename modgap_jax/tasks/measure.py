"""``config.task = 'measure'``: a pretrained CLIP's modality gap on one split of a dataset.

``configs/pretrained.py:measure`` (docs/pretrained.md). Any dataset a run can train on (a
built one, ``coco_raw`` or ``image_text_folder`` from the user's files, the scenes world), and
any split of it (``dataset.eval_split``):

1. :func:`modgap_jax.run_setup.setup_run` (without a workdir) checks the config and builds
   the split, the tokenizer, the model of ``init_from``'s open_clip config with its image
   size and normalisation, and the evaluator. Then the checkpoint's weights load
   (``pretrained.load``: a truncated file, or one that does not fit its config, is one
   ConfigError naming the first bad tensor). Nothing is written before.
2. The run's evaluator embeds the split (images, captions, and the zero-shot prompts when
   the dataset has labels) into ``embeddings.npz``, with the analyze task's keys.
3. The analyze task (:mod:`.analyze`) measures those embeddings: ``analysis.json``,
   ``report.md`` and its five figures. β of the loss-based measurements is
   ``analysis.beta``, or with 0 the checkpoint's own β = e^s. ``analysis.json`` gains
   ``pretrained``: the checkpoint, its logit scale s and β, the dataset, split and tokenizer.

A measurement reads one split: the training split is set to the measured one, and the batch
size to one image per device. Nothing trains, so the run setup's checks of the training
batch then hold for any split, however small.
"""

from __future__ import annotations

import math
import os
from typing import Any

import flax.jax_utils
import jax
import ml_collections
import numpy as np

from modgap_jax import run_io, run_setup
from modgap_jax.data import registry
from modgap_jax.errors import ConfigError
from modgap_jax.pretrained import run as pretrained_run
from modgap_jax.tasks import analyze, analyze_inputs

EMBEDDINGS_FILE = "embeddings.npz"


def analysis_config(config: ml_collections.ConfigDict, beta: float) -> ml_collections.ConfigDict:
  """The analyze task's config: ``config.analysis`` (configs/analyze.py's fields) at ``beta``."""
  out = ml_collections.ConfigDict(config.analysis.to_dict())
  out.task, out.embeddings, out.beta = "analyze", "", float(beta)
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Embeds the split with the checkpoint and analyses it into ``workdir``; returns the analysis."""
  if not pretrained_run.init_from(config):
    raise ConfigError("init_from is empty; give the open_clip checkpoint to measure (--config.init_from=PATH)")
  if float(config.analysis.beta) < 0:
    raise ConfigError(f"analysis.beta={config.analysis.beta} must be > 0, or 0 for the checkpoint's own β")
  analyze.analyze_options(analysis_config(config, float(config.analysis.beta) or 1.0))  # before the data
  say = registry.say_once if jax.process_index() == 0 else None
  split = run_setup.eval_split_of(config.dataset, say=say)
  config.dataset.eval_split = config.dataset.train_split = split
  config.batch_size = jax.device_count()
  run = run_setup.setup_run(config, None)
  loaded = pretrained_run.load_checkpoint(config, run.spec.reparam)
  beta = float(config.analysis.beta) or math.exp(loaded.logit_scale)
  options = analysis_config(config, beta)
  analyze.analyze_options(options)

  raw = analyze_inputs.embed_split(run, flax.jax_utils.replicate(loaded.variables))
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, EMBEDDINGS_FILE)
  with run_io.atomic_path(path) as tmp, open(tmp, "wb") as f:
    np.savez(f, **{k: raw[k] for k in analyze_inputs.NPZ_KEYS if raw[k] is not None})
  options.embeddings = path
  result = analyze.run(options, workdir)
  result["pretrained"] = {
    "init_from": config.init_from,
    "pretrained_config": config.pretrained_config,
    "logit_scale": loaded.logit_scale,
    "checkpoint_beta": math.exp(loaded.logit_scale),
    "image_tower": config.model.image_tower,
    "image_size": config.model.image_size,
    "embed_dim": config.model.embed_dim,
    "dataset": config.dataset.name,
    "split": split,
    "tokenizer": config.dataset.tokenizer,
  }
  run_io.write_json(os.path.join(workdir, "analysis.json"), result)
  return result
