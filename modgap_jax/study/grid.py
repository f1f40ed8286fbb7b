"""A grid of ordinary training runs (Tables 2 and 3, Fig. 4a), resumable.

Every cell × seed is :func:`modgap_jax.train.train_and_evaluate` on the cell's config with
``seed = k``, in ``workdir/<cell>/seed<k>/``; one seed of every cell comes before the next
seed, so a study stopped early still covers every cell. Finished runs
(:func:`results.final_eval`) are skipped and the others resume from their own checkpoints.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from tqdm import tqdm

from modgap_jax import preemption, run_setup, train
from modgap_jax import workdir as workdir_lib
from modgap_jax.errors import Preempted
from modgap_jax.study import results as results_lib
from modgap_jax.study.cells import Cell


def run_grid(study: ml_collections.ConfigDict, cells: list[Cell], workdir: str) -> dict[str, Any]:
  """Trains the unfinished runs of the grid, then aggregates; returns what results.json holds.

  Every cell with a run to do is set up (its data read and checked) before the study's
  workdir is touched, so a cell that its data refuse stops the study before anything trains.
  """
  grid = [(cell, seed) for seed in range(int(study.seeds)) for cell in cells]
  todo = [(c, s) for c, s in grid if results_lib.final_eval(c.run_dir(workdir, s)) is None]
  cache = run_setup.DataCache()  # the cells share their dataset and tokenizer
  checked = set()
  for cell, seed in todo:
    if cell.name not in checked:
      run_setup.setup_run(cell.seed_config(seed), cell.run_dir(workdir, seed), cache=cache)
      checked.add(cell.name)

  with workdir_lib.WorkdirLock(workdir), preemption.StopRequests() as stop:
    bar = tqdm(
      total=len(grid),
      initial=len(grid) - len(todo),
      desc=f"study {study.study}",
      unit="run",
      disable=not study.progress_bar,
      dynamic_ncols=True,
    )
    try:
      for done, (cell, seed) in enumerate(todo):
        if stop.requested:  # a signal between two runs: nothing is lost, the next start goes on
          raise Preempted(stop.requested, f"after {len(grid) - len(todo) + done} of {len(grid)} runs in {workdir}")
        bar.set_description(f"study {study.study}: {cell.name} seed {seed}")
        config = cell.seed_config(seed)
        config.progress_bar = config.progress_bar and bool(study.progress_bar)
        train.train_and_evaluate(config, cell.run_dir(workdir, seed), cache=cache)
        bar.update(1)
    finally:
      bar.close()
    return results_lib.aggregate(study, workdir, cells)
