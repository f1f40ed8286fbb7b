"""A study's ``results.json``, ``table.md`` and figures, from the runs finished so far.

A run counts as finished when its ``report.md`` exists (written only once training and the
final evaluation are done) and ``metrics.jsonl`` holds an eval line at the total step of its
``plan.json``. Per cell, ``results.json`` holds the exact command of one seed and, per
final-eval scalar, ``{"mean", "std" (ddof = 1), "values"}`` over the seeds finished so far;
``fig4a`` adds the Theorem 3.2 fit (:mod:`modgap_jax.study.fig4a`).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import ml_collections
import numpy as np

from modgap_jax import run_io
from modgap_jax.step_plan import read_plan
from modgap_jax.study import cells as cells_lib
from modgap_jax.study import fig4a, tables


def final_eval(run_dir: str) -> dict[str, Any] | None:
  """The eval line of a finished run's last planned step, else None (see the module docstring)."""
  log = os.path.join(run_dir, "metrics.jsonl")
  plan = read_plan(run_dir)
  if plan is None or not (os.path.exists(log) and os.path.exists(os.path.join(run_dir, "report.md"))):
    return None
  finals = [r for r in run_io.read_metrics(log) if r.get("split") == "eval" and r.get("step") == plan.total_steps]
  return finals[-1] if finals else None


def summarize(values: list[float | None]) -> dict[str, Any]:
  """``{"mean", "std", "values"}``: std is the sample std (ddof = 1), 0 for a single value.

  Non-finite values (stored as null) are left out of the mean and std but keep their place
  in ``values``, so ``values[k]`` stays seed k's.
  """
  finite = [float(v) for v in values if v is not None and math.isfinite(v)]
  mean = float(np.mean(finite)) if finite else None
  std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
  return {"mean": mean, "std": std, "values": [None if v is None else float(v) for v in values]}


def _scalar_keys(records: list[dict[str, Any]]) -> list[str]:
  keys = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
  return sorted(keys - {"step"})


def cell_results(study: ml_collections.ConfigDict, workdir: str, cell: cells_lib.Cell) -> tuple[dict[str, Any], list]:
  """One cell's entry of results.json, and the metrics.jsonl records of its finished seeds."""
  finals, histories = {}, []
  for seed in range(int(study.seeds)):
    path = cell.run_dir(workdir, seed)
    final = final_eval(path)
    if final is not None:
      finals[seed] = final
      histories.append(run_io.read_metrics(os.path.join(path, "metrics.jsonl")))
  config = cell.config
  steps = (
    int(next(iter(finals.values()))["step"]) if finals else (int(config.num_steps) if config.num_steps > 0 else None)
  )
  entry = {
    "cell": cell.name,
    "dir": cell.dirname,
    "seeds": sorted(finals),
    "num_seeds": len(finals),
    "seeds_planned": int(study.seeds),
    "command": cells_lib.command(study, cell.name),
    "num_steps": steps,
    "metrics": {k: summarize([finals[s].get(k) for s in sorted(finals)]) for k in _scalar_keys(finals.values())},
  }
  if config.swap.method != "none":
    entry["swap_method"], entry["swap_p"] = config.swap.method, float(config.swap.p)
    # Each step swaps with probability p (MATH.md §4.2 [C]): p × steps swapped steps expected.
    entry["expected_swaps"] = None if steps is None else float(config.swap.p) * steps
  return entry, histories


def aggregate(
  study: ml_collections.ConfigDict, workdir: str, cells: list[cells_lib.Cell] | None = None
) -> dict[str, Any]:
  """results.json, table.md and the figures, from the runs finished so far under ``workdir``.

  ``cells``: the study's resolved cells (:func:`cells.resolve_cells`), resolved here if None.
  """
  from modgap_jax.plots import study as study_plots

  cells = cells_lib.resolve_cells(study) if cells is None else cells
  results = {
    "study": study.study,
    "base_config": study.base_config,
    "base_overrides": cells_lib.flatten_overrides(study.base_overrides),
    "cells": [],
  }
  histories = {}
  for cell in cells:
    entry, histories[cell.name] = cell_results(study, workdir, cell)
    results["cells"].append(entry)
  results["complete"] = all(c["num_seeds"] == c["seeds_planned"] for c in results["cells"])
  if study.study == "fig4a":
    cell = cells[0]
    min_step = int(study.fig4a_min_step)
    if min_step < 0 and histories[cell.name]:  # the warm-up of the first finished seed
      first = results["cells"][0]["seeds"][0]
      min_step = read_plan(cell.run_dir(workdir, first)).warmup_steps
    temperature = cell.config.temperature
    capped = temperature.mode == "learned" and temperature.get("beta_cap") is not None
    tau_cap = 1.0 / float(temperature.beta_cap) if capped else None
    results.update(fig4a.theorem32_fit(histories[cell.name], min_step=max(min_step, 0), tau_cap=tau_cap))
  os.makedirs(workdir, exist_ok=True)
  run_io.write_json(os.path.join(workdir, "results.json"), results)
  run_io.write_text(os.path.join(workdir, "table.md"), tables.render_table(results))
  study_plots.plot_study(results, histories, workdir)
  return load_results(workdir)  # as stored: NaN → null, tuples → lists


def load_results(workdir: str) -> dict[str, Any]:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)
