"""``config.task = 'study'``: a resumable study of the paper into ``workdir`` (see ``configs/study.py``)."""

from __future__ import annotations

from typing import Any

import ml_collections

from modgap_jax import study


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) the study; returns what its results.json holds."""
  return study.run_study(config, workdir)
