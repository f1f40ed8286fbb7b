"""``config.task = 'train'``: train and evaluate one CLIP into ``workdir`` (see ``configs/default.py``)."""

from __future__ import annotations

import ml_collections

from modgap_jax import train


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run; returns its final eval metrics."""
  return train.train_and_evaluate(config, workdir)
