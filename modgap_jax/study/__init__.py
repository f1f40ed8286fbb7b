"""The paper's experiments as resumable studies: Tables 2 and 3, Fig. 4a and Fig. 4b.

``run_study(config, workdir)`` runs the study ``config.study`` (see ``configs/study.py``):

- ``table2``, ``table3``, ``fig4a``: a grid of ordinary training runs (:mod:`.grid`), one per
  cell × seed, each :func:`modgap_jax.train.train_and_evaluate` on ``<base_config>:<cell>``
  with ``seed = k`` and ``base_overrides`` applied, in ``workdir/<cell>/seed<k>/``. Finished
  runs are skipped, the others resume. Then :func:`.results.aggregate` writes
  ``results.json``, ``table.md`` (:mod:`.tables`: ours beside the paper's Table 2 or 3) and
  the figures of :mod:`modgap_jax.plots.study`; ``fig4a`` adds the Theorem 3.2 fit
  Δ(t) = a + b·(−1/log²t) (:mod:`.fig4a`).
- ``fig4b``: Theorem 3.3 on real data (:mod:`.fig4b`): many random initialisations, each
  trained a few steps on the same batches, with Δ on fixed held-out pairs before and after.

Each cell's config is resolved once (:func:`.cells.resolve_cells`), and every cell is checked
(its config, then its data) before the study's workdir is touched. SIGTERM or SIGINT stops
either kind at the next safe point, with everything finished saved; the same command resumes.

The package's modules, one job each: ``paper`` (the paper's numbers, the studies' cells),
``cells`` (configs, overrides, commands, directories), ``grid`` (the runs, resumable),
``results`` (results.json), ``tables`` (table.md), ``fig4a``, ``fig4b``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from modgap_jax.errors import ConfigError, check_choice
from modgap_jax.study.cells import (
  cell_dirname,
  command,
  flatten_overrides,
  nest_overrides,
  resolve_cells,
  study_cells,
)
from modgap_jax.study.fig4a import linear_fit, theorem32_fit
from modgap_jax.study.paper import HS_PAPER_P, PAPER_FIG4B, PAPER_STEPS, PAPER_TABLE2, PAPER_TABLE3, STUDIES

__all__ = [
  "HS_PAPER_P",
  "PAPER_STEPS",
  "PAPER_FIG4B",
  "PAPER_TABLE2",
  "PAPER_TABLE3",
  "STUDIES",
  "cell_dirname",
  "command",
  "flatten_overrides",
  "linear_fit",
  "nest_overrides",
  "resolve_cells",
  "run_study",
  "study_cells",
  "theorem32_fit",
]


def run_study(study: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the study ``study.study`` into ``workdir``; returns what it wrote to results.json."""
  # Imported here: the training stack is heavy, and configs/study.py imports this package.
  from modgap_jax import run_setup
  from modgap_jax.study import fig4b, grid

  name = check_choice("study", study.study, tuple(STUDIES))
  if int(study.seeds) < 1:
    raise ConfigError(f"seeds={study.seeds!r} must be a positive integer")
  cells = resolve_cells(study)
  for cell in cells:  # a bad cell or override fails here, before any data is read
    run_setup.check_config(cell.config)
  if name == "fig4b":
    return fig4b.run_fig4b(study, cells[0], workdir)
  return grid.run_grid(study, cells, workdir)
