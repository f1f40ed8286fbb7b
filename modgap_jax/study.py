"""The paper's experiments as resumable studies: Tables 2 and 3, Fig. 4a and Fig. 4b.

``run_study(config, workdir)`` runs the study ``config.study`` (see ``configs/study.py``):

- ``table2``, ``table3``, ``fig4a``: a grid of ordinary training runs. Every cell × seed is
  :func:`modgap_jax.train.train_and_evaluate` on ``<base_config>:<cell>`` with ``seed = k`` and
  ``base_overrides`` applied, in ``workdir/<cell>/seed<k>/``; one seed of every cell comes
  before the next seed, so a study stopped early still covers every cell. A run counts as
  finished when its ``report.md`` exists and ``metrics.jsonl`` holds the eval line of its last
  step; finished runs are skipped and the others resume from their own checkpoints. Then
  :func:`aggregate` writes ``results.json`` (per cell: the exact command of one seed and, per
  final-eval scalar, ``{"mean", "std" (ddof = 1), "values"}`` over the seeds finished so far),
  ``table.md`` (ours beside the paper's Table 2 or Table 3) and the figures of
  :mod:`modgap_jax.plots.study`. ``fig4a`` adds the Theorem 3.2 fit Δ(t) = a + b·(−1/log²t).
- ``fig4b``: Theorem 3.3 on real data (:func:`run_fig4b`): many random initialisations, each
  trained a few steps on the same batches, with Δ on fixed held-out pairs before and after.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np
from tqdm import tqdm

from modgap_jax import run_io
from modgap_jax.errors import ConfigError, Preempted, check_choice

# The paper's Table 2 (CLIP RN50 on MSCOCO, mean of 3 seeds; accuracies and R@1 in percent).
# "t2i" is the paper's image retrieval R@1, "i2t" its text retrieval R@1.
PAPER_TABLE2 = {
  "baseline": dict(gap=0.294, uniformity=-1.165, zeroshot=13.65, probe=65.55, t2i=68.23, i2t=78.37),
  "flt=0.04": dict(gap=0.122, uniformity=-1.183, zeroshot=14.40, probe=61.98, t2i=73.44, i2t=82.66),
  "ts=S3": dict(gap=0.088, uniformity=-1.108, zeroshot=17.17, probe=67.50, t2i=75.72, i2t=85.31),
  "tr=softplus": dict(gap=0.284, uniformity=-1.153, zeroshot=14.86, probe=66.46, t2i=70.06, i2t=80.10),
  "slrt": dict(gap=0.268, uniformity=-1.152, zeroshot=15.13, probe=66.63, t2i=70.32, i2t=80.40),
  "hs": dict(gap=0.225, uniformity=-1.156, zeroshot=13.91, probe=65.95, t2i=69.72, i2t=79.74),
  "ss=5e-2": dict(gap=0.139, uniformity=-1.152, zeroshot=14.33, probe=64.94, t2i=68.91, i2t=79.16),
}
# The paper's Table 3 (the FLT sweep), and its full hard swap p = 1 (reported in the text
# beside Table 3, without a text R@1).
PAPER_TABLE3 = {
  "flt=0.01": dict(gap=0.669, t2i=69.89, i2t=80.68, probe=69.44),
  "flt=0.02": dict(gap=0.334, t2i=70.54, i2t=81.30, probe=68.41),
  "flt=0.04": dict(gap=0.122, t2i=73.44, i2t=82.66, probe=61.98),
  "flt=0.07": dict(gap=0.033, t2i=75.53, i2t=82.88, probe=49.61),
  "flt=0.1": dict(gap=0.019, t2i=66.55, i2t=73.58, probe=48.29),
  "flt=0.2": dict(gap=0.008, t2i=23.97, i2t=26.94, probe=50.14),
  "flt=0.4": dict(gap=0.009, t2i=6.90, i2t=8.70, probe=37.97),
  "hs=1.0": dict(gap=0.028, t2i=47.17, i2t=None, probe=39.72),
}
# The paper's Fig. 4b: over 100 random initialisations, Δ rose during the first 10 steps in
# every trial, by about 0.15 on average.
PAPER_FIG4B = dict(num_inits=100, num_steps=10, share_rising=1.0, mean_rise=0.15)
# The paper's HS at p = 1e-3 over ~100 epochs of MSCOCO at batch 1024 (~11 500 steps) expects
# ~11.5 swapped steps; Table 2's HS cell keeps that count over our 1 000 steps (p = 0.0115)
# rather than a p = 1e-3 that would expect a single swap.
PAPER_STEPS = 11_500
HS_PAPER_P = 1e-3

STUDIES = {
  "table2": ("baseline", "flt=0.04", "ts=S3", "tr=softplus", "slrt", "hs=0.0115", "ss=5e-2"),
  "table3": ("flt=0.01", "flt=0.02", "flt=0.04", "flt=0.07", "flt=0.1", "flt=0.2", "flt=0.4", "hs=1.0"),
  "fig4a": ("baseline",),
  "fig4b": ("baseline",),
}


# ----------------------------------------------------------------------------------------
# Cells: their training configs, commands and directories.
# ----------------------------------------------------------------------------------------


def load_config_file(path: str, arg: str) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file, as ``--config path:arg`` would load it."""
  if not os.path.isfile(path):
    raise ConfigError(f"study base_config={path!r}: no such file")
  spec = importlib.util.spec_from_file_location("_study_base_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def flatten_overrides(overrides: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
  """``{'dataset': {'name': 'x'}, 'optimizer.eps': 1e-3}`` → ``{'dataset.name': 'x', 'optimizer.eps': 1e-3}``.

  Nested mappings and dotted keys may be mixed; the result maps dotted field paths to leaves.
  """
  if overrides is None:
    return {}
  if isinstance(overrides, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    overrides = overrides.to_dict()
  if not isinstance(overrides, Mapping):
    raise ConfigError(f"base_overrides={overrides!r} must be a dict of dotted field → value")
  flat = {}
  for key, value in overrides.items():
    path = f"{prefix}{key}"
    if isinstance(value, (Mapping, ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
      flat.update(flatten_overrides(value, prefix=f"{path}."))
    else:
      flat[path] = value
  return flat


def nest_overrides(flat: Mapping[str, Any]) -> dict[str, Any]:
  """``{'dataset.name': 'x', 'num_steps': 6}`` → ``{'dataset': {'name': 'x'}, 'num_steps': 6}``.

  A ConfigDict field cannot hold dotted keys, so ``config.base_overrides`` takes them nested.
  """
  nested: dict[str, Any] = {}
  for dotted, value in flatten_overrides(flat).items():
    *path, leaf = dotted.split(".")
    node = nested
    for name in path:
      node = node.setdefault(name, {})
    node[leaf] = value
  return nested


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets each dotted field of ``overrides`` in ``config``; an unknown field is a ConfigError."""
  for dotted, value in flatten_overrides(overrides).items():
    *path, leaf = dotted.split(".")
    node = config
    for name in path:
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        raise ConfigError(f"base_overrides: no such config field {dotted!r}")
      node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ConfigError(f"base_overrides: no such config field {dotted!r}")
    try:
      node[leaf] = value
    except TypeError as e:
      raise ConfigError(f"base_overrides: {dotted}={value!r} has the wrong type ({e})".splitlines()[0]) from None


def study_cells(study: ml_collections.ConfigDict) -> list[str]:
  """The study's cells: ``config.cells``, or the study's own (``STUDIES``) when empty."""
  name = check_choice("study", study.study, tuple(STUDIES))
  return list(study.cells) or list(STUDIES[name])


def cell_config(study: ml_collections.ConfigDict, cell: str, seed: int) -> ml_collections.ConfigDict:
  """The training config of one cell and seed: ``base_config:<cell>``, ``seed``, then the overrides."""
  config = load_config_file(study.base_config, cell)
  config.seed = int(seed)
  apply_overrides(config, study.base_overrides)
  return config


def flag_value(value: Any) -> str:
  """``value`` as config_flags reads it back from ``--config.<field>=<text>``."""
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value)  # numbers and bools; repr keeps every digit of a float


def command(study: ml_collections.ConfigDict, cell: str) -> str:
  """The command line that trains one seed of ``cell`` exactly as the study does.

  ``{seed}`` and ``{workdir}`` are placeholders (``str.format``); each base override becomes
  one ``--config.<field>=<value>`` flag. The study's own progress-bar setting is left out:
  it changes nothing a run computes.
  """
  flags = [
    shlex.quote(f"--config.{field}={flag_value(value)}")
    for field, value in sorted(flatten_overrides(study.base_overrides).items())
  ]
  return " ".join(
    [
      "python -m experiments.main",
      shlex.quote(f"--config={study.base_config}:{cell}"),
      "--config.seed={seed}",
      *flags,
      "--workdir {workdir}",
    ]
  )


def cell_dirname(cell: str) -> str:
  """A readable, filesystem-safe directory name: ``flt=0.04`` stays, ``tr=exp_scaled:4`` → ``tr=exp_scaled_4``."""
  return re.sub(r"[^A-Za-z0-9._=+-]", "_", cell)


def run_dir(workdir: str, cell: str, seed: int) -> str:
  return os.path.join(workdir, cell_dirname(cell), f"seed{seed}")


# ----------------------------------------------------------------------------------------
# Finished runs.
# ----------------------------------------------------------------------------------------


def steps_per_epoch_of(records: list[dict[str, Any]]) -> float | None:
  """Steps per epoch, read back from a train line (it logs ``epoch = step / steps_per_epoch``)."""
  for r in records:
    if r.get("split") == "train" and r.get("epoch"):
      return r["step"] / r["epoch"]
  return None


def planned_steps(config: ml_collections.ConfigDict, records: list[dict[str, Any]]) -> int | None:
  """The run's total steps, as :func:`modgap_jax.train.plan_steps` gives them, without loading data."""
  if int(config.num_steps) > 0:
    return int(config.num_steps)
  per_epoch = steps_per_epoch_of(records)
  return None if per_epoch is None else max(1, round(float(config.num_epochs) * round(per_epoch)))


def warmup_steps_of(config: ml_collections.ConfigDict, records: list[dict[str, Any]]) -> int:
  """The run's learning-rate warm-up in steps (``optimizer.warmup_epochs`` × steps per epoch)."""
  per_epoch = steps_per_epoch_of(records)
  return 0 if per_epoch is None else round(float(config.optimizer.warmup_epochs) * round(per_epoch))


def final_eval(path: str, config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The eval line of a finished run's last step, else None.

  Finished means: ``report.md`` exists (written only once training and the final evaluation
  are done) and ``metrics.jsonl`` holds an eval line at the run's planned total step.
  """
  log = os.path.join(path, "metrics.jsonl")
  if not (os.path.exists(log) and os.path.exists(os.path.join(path, "report.md"))):
    return None
  records = run_io.read_metrics(log)
  total = planned_steps(config, records)
  finals = [r for r in records if r.get("split") == "eval" and r.get("step") == total]
  return finals[-1] if finals else None


# ----------------------------------------------------------------------------------------
# The grid.
# ----------------------------------------------------------------------------------------


def run_study(study: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the study ``study.study`` into ``workdir``; returns what it wrote to results.json."""
  name = check_choice("study", study.study, tuple(STUDIES))
  if int(study.seeds) < 1:
    raise ConfigError(f"seeds={study.seeds!r} must be a positive integer")
  cells = study_cells(study)
  from modgap_jax import preemption, train
  from modgap_jax import workdir as workdir_lib

  for cell in cells:  # a bad cell or override fails at the trainer's boundary, before anything trains
    train.check_config(cell_config(study, cell, 0))

  with workdir_lib.WorkdirLock(workdir), preemption.StopRequests() as stop:
    if name == "fig4b":
      return run_fig4b(study, workdir)
    grid = [(cell, seed) for seed in range(int(study.seeds)) for cell in cells]
    todo = [(c, s) for c, s in grid if final_eval(run_dir(workdir, c, s), cell_config(study, c, s)) is None]
    bar = tqdm(
      total=len(grid),
      initial=len(grid) - len(todo),
      desc=f"study {name}",
      unit="run",
      disable=not study.progress_bar,
      dynamic_ncols=True,
    )
    try:
      for done, (cell, seed) in enumerate(todo):
        if stop.requested:  # a signal between two runs: nothing is lost, the next start goes on
          raise Preempted(stop.requested, f"after {len(grid) - len(todo) + done} of {len(grid)} runs in {workdir}")
        bar.set_description(f"study {name}: {cell} seed {seed}")
        config = cell_config(study, cell, seed)
        config.progress_bar = config.progress_bar and bool(study.progress_bar)
        train.train_and_evaluate(config, run_dir(workdir, cell, seed))
        bar.update(1)
    finally:
      bar.close()
    return aggregate(study, workdir)


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


def cell_results(study: ml_collections.ConfigDict, workdir: str, cell: str) -> tuple[dict[str, Any], list]:
  """One cell's entry of results.json, and the metrics.jsonl records of its finished seeds."""
  finals, histories = {}, []
  for seed in range(int(study.seeds)):
    path = run_dir(workdir, cell, seed)
    final = final_eval(path, cell_config(study, cell, seed))
    if final is not None:
      finals[seed] = final
      histories.append(run_io.read_metrics(os.path.join(path, "metrics.jsonl")))
  config = cell_config(study, cell, 0)
  steps = (
    int(next(iter(finals.values()))["step"]) if finals else (int(config.num_steps) if config.num_steps > 0 else None)
  )
  entry = {
    "cell": cell,
    "dir": cell_dirname(cell),
    "seeds": sorted(finals),
    "num_seeds": len(finals),
    "seeds_planned": int(study.seeds),
    "command": command(study, cell),
    "num_steps": steps,
    "metrics": {k: summarize([finals[s].get(k) for s in sorted(finals)]) for k in _scalar_keys(finals.values())},
  }
  if config.swap.method != "none":
    entry["swap_method"], entry["swap_p"] = config.swap.method, float(config.swap.p)
    # Each step swaps with probability p (MATH.md §4.2 [C]): p × steps swapped steps expected.
    entry["expected_swaps"] = None if steps is None else float(config.swap.p) * steps
  return entry, histories


def aggregate(study: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """results.json, table.md and the figures, from the runs finished so far under ``workdir``."""
  from modgap_jax.plots import study as study_plots

  results = {
    "study": study.study,
    "base_config": study.base_config,
    "base_overrides": flatten_overrides(study.base_overrides),
    "cells": [],
  }
  histories = {}
  for cell in study_cells(study):
    entry, histories[cell] = cell_results(study, workdir, cell)
    results["cells"].append(entry)
  results["complete"] = all(c["num_seeds"] == c["seeds_planned"] for c in results["cells"])
  if study.study == "fig4a":
    cell = results["cells"][0]["cell"]
    min_step = int(study.fig4a_min_step)
    if min_step < 0 and histories[cell]:
      min_step = warmup_steps_of(cell_config(study, cell, 0), histories[cell][0])
    results.update(theorem32_fit(histories[cell], min_step=max(min_step, 0)))
  os.makedirs(workdir, exist_ok=True)
  run_io.write_json(os.path.join(workdir, "results.json"), results)
  run_io.write_text(os.path.join(workdir, "table.md"), render_table(results))
  study_plots.plot_study(results, histories, workdir)
  return load_results(workdir)  # as stored: NaN → null, tuples → lists


# ----------------------------------------------------------------------------------------
# Fig. 4a: Theorem 3.2's slow closure, Δ(t) against −1/log²t.
# ----------------------------------------------------------------------------------------


def linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
  """Least-squares line y ≈ a + b·x: returns (b, a, R²).

  b = Σ(x−x̄)(y−ȳ) / Σ(x−x̄)², a = ȳ − b·x̄, R² = 1 − Σ(y − a − b·x)² / Σ(y−ȳ)².
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xc, yc = x - x.mean(), y - y.mean()
  slope = float(xc @ yc / (xc @ xc))
  intercept = float(y.mean() - slope * x.mean())
  residual = y - (intercept + slope * x)
  r2 = float(1.0 - residual @ residual / (yc @ yc))
  return slope, intercept, r2


def mean_eval_curve(histories: list[list[dict[str, Any]]], key: str = "gap") -> tuple[np.ndarray, np.ndarray]:
  """(steps, mean over runs of ``key``) at the eval steps every run has."""
  curves = [
    {r["step"]: r[key] for r in records if r.get("split") == "eval" and r.get(key) is not None} for records in histories
  ]
  if not curves:
    return np.zeros(0), np.zeros(0)
  steps = sorted(set.intersection(*(set(c) for c in curves)))
  return np.asarray(steps, np.float64), np.asarray([np.mean([c[s] for c in curves]) for s in steps], np.float64)


def theorem32_fit(histories: list[list[dict[str, Any]]], min_step: int) -> dict[str, Any]:
  """Least squares Δ(t) = a + b·x, x = −1/log²t, over the eval points with t > ``min_step``.

  Theorem 3.2: with a learned β = e^ν and a positive margin, Δ(t) = Ω(1/log²t), so against
  x = −1/log²t the gap falls on a line of slope b < 0 (the paper's Fig. 4a). Δ is the mean
  over seeds at each eval step; ``min_step`` is the end of the learning-rate warm-up, before
  which the dynamics are the warm-up's, not the theorem's.

  Returns ``{"r2", "slope", "intercept", "fit_min_step", "points": [[t, x, Δ], ...]}`` (the
  fit's numbers are None with fewer than 3 points).
  """
  steps, gaps = mean_eval_curve(histories, "gap")
  keep = steps > max(min_step, 1)  # log 1 = 0: t = 1 has no x
  t, gap = steps[keep], gaps[keep]
  x = -1.0 / np.log(t) ** 2
  out = {"fit_min_step": int(min_step), "points": [[float(a), float(b), float(c)] for a, b, c in zip(t, x, gap)]}
  if len(t) < 3:
    return {**out, "r2": None, "slope": None, "intercept": None}
  slope, intercept, r2 = linear_fit(x, gap)
  return {**out, "r2": r2, "slope": slope, "intercept": intercept}


# ----------------------------------------------------------------------------------------
# Fig. 4b: Theorem 3.3's early rise of the gap, over many random initialisations.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Fig4bSetup:
  """Everything every initialisation shares: model, optimizer, batches and held-out pairs."""

  config: ml_collections.ConfigDict
  model: Any
  tx: Any
  spec: Any
  batches: list[dict[str, np.ndarray]]  # num_steps × {'image': [1, B, S, S, 3], 'text': [1, B, L]}
  pair_images: np.ndarray  # [P, S, S, 3], normalised
  pair_tokens: np.ndarray  # [P, L]
  pair_captions: np.ndarray  # [P] caption indices of the eval split
  learning_rates: list[float]  # the towers' rate at each of the steps
  lr_note: str


def fig4b_learning_rate(
  study: ml_collections.ConfigDict, config: ml_collections.ConfigDict, total_steps: int, warmup_steps: int
) -> tuple[ml_collections.ConfigDict, int, int, str]:
  """The optimizer config, total and warm-up steps the Fig. 4b steps use, and why.

  ``fig4b_lr < 0``: the regime's own schedule, warm-up included; its first steps see
  lr(k) = peak·k/warm-up, almost nothing (k ≤ 9 of a 100-step warm-up: ≤ 9 % of the peak).
  ``fig4b_lr = 0`` (default): the regime's peak rate with the warm-up left out, i.e. its
  cosine lr(k) = peak·½(1 + cos(πk/T)), within 0.03 % of the peak over 10 of T = 1 000 steps.
  ``fig4b_lr > 0``: that rate, the same way. ν keeps its ``temperature.lr_multiplier``.
  """
  lr = float(study.fig4b_lr)
  if lr < 0:
    return config, total_steps, warmup_steps, "the regime's schedule, warm-up included"
  config = ml_collections.ConfigDict(config.to_dict())
  if lr > 0:
    config.optimizer.learning_rate = lr
  return config, total_steps, 0, f"constant {config.optimizer.learning_rate:g} (the regime's cosine, no warm-up)"


def fig4b_setup(study: ml_collections.ConfigDict, workdir: str) -> Fig4bSetup:
  """Builds the shared pieces of Fig. 4b from the first cell's training config (seed 0)."""
  from modgap_jax import data, models, train
  from modgap_jax import train_step as ts

  config = cell_config(study, study_cells(study)[0], 0)
  data_dir = config.dataset.data_dir or None
  files = data.file_options(config.dataset)
  train_split = data.load_examples(config.dataset.name, config.dataset.train_split, data_dir, **files)
  eval_split = data.load_examples(config.dataset.name, config.dataset.eval_split, data_dir, **files)
  tokenizer = train.load_tokenizer(config, train_split, workdir)
  os.makedirs(workdir, exist_ok=True)
  run_io.write_text(os.path.join(workdir, "tokenizer.json"), tokenizer.to_json())
  _, total, warmup = train.plan_steps(config, len(train_split))
  opt_config, total, warmup, note = fig4b_learning_rate(study, config, total, warmup)
  schedule = ts.learning_rate_schedule(opt_config.optimizer, total, warmup)
  tx, spec = ts.make_optimizer(opt_config, total, warmup, schedule=schedule)
  model = models.create_model(config.model, spec.nu_init)
  size, length = config.model.image_size, config.model.context_length

  # The first training batches of the host pipeline (seed 0): clean pairs, no crops.
  stream = data.train_batches(
    train_split,
    data.TrainStream(
      global_batch_size=config.batch_size,
      num_devices=1,
      image_size=size,
      context_length=length,
      seed=int(config.seed),
      mean=config.dataset.mean,
      std=config.dataset.std,
      tokenizer=tokenizer,
    ),
  )
  num_steps = int(study.num_steps)
  batches = [next(stream) for _ in range(num_steps)]

  # The same random held-out pairs as the trainer's ``gap_512`` (evaluation.embedding_metrics).
  captions = [c for caps in eval_split.captions() for c in caps]
  caption_image = data.caption_image_index(eval_split)
  sample = np.random.default_rng(int(config.seed)).choice(
    len(captions), size=min(int(config.eval.gap_pairs), len(captions)), replace=False
  )
  images, _ = eval_split.fetch(caption_image[sample], size)
  pair_images = data.normalize(images, config.dataset.mean, config.dataset.std)
  pair_tokens = tokenizer.encode([captions[c] for c in sample], length)
  return Fig4bSetup(
    config=config,
    model=model,
    tx=tx,
    spec=spec,
    batches=batches,
    pair_images=pair_images,
    pair_tokens=pair_tokens,
    pair_captions=sample,
    learning_rates=[float(schedule(k)) for k in range(num_steps)],
    lr_note=note,
  )


def init_key(seed: int, index: int):
  """Initialisation ``index``'s key: independent of how the inits are chunked."""
  import jax

  return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def gap_f64(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
  """Δ = ‖mean(image_emb) − mean(text_emb)‖₂ in float64."""
  return float(np.linalg.norm(np.asarray(image_emb, np.float64).mean(0) - np.asarray(text_emb, np.float64).mean(0)))


def _fig4b_functions(setup: Fig4bSetup):
  """(init, step, embed), each jitted over a chunk of initialisations.

  ``train_step`` needs the named axis ``train_step.AXIS`` (it psums over it): an inner vmap
  over a leading axis of size 1 provides it; the outer vmap runs the initialisations.
  """
  import jax

  from modgap_jax import train_step as ts

  model, tx = setup.model, setup.tx
  config = setup.config
  image_shape = (config.model.image_size, config.model.image_size, 3)

  def init_one(key):
    state = ts.init_state(model, tx, key, image_shape, config.model.context_length)
    return jax.tree.map(lambda x: x[None], state)  # the size-1 named axis

  step = functools.partial(ts.train_step, model=model, tx=tx, reparam=setup.spec.reparam)
  on_axis = jax.vmap(step, axis_name=ts.AXIS)
  step_chunk = jax.jit(jax.vmap(on_axis, in_axes=(0, None)))

  def embed_one(state, images, tokens):
    variables = ts.model_variables(*jax.tree.map(lambda x: x[0], (state.params, state.batch_stats)))
    return model.apply(variables, images, tokens, train=False)

  embed_chunk = jax.jit(jax.vmap(embed_one, in_axes=(0, None, None)))
  return jax.jit(jax.vmap(init_one)), step_chunk, embed_chunk


def fig4b_fingerprint(study: ml_collections.ConfigDict, setup: Fig4bSetup) -> dict[str, Any]:
  """What the per-init results depend on; partial results are reused only when it matches."""
  return run_io.to_jsonable(
    {
      "base_config": study.base_config,
      "cell": study_cells(study)[0],
      "base_overrides": flatten_overrides(study.base_overrides),
      "num_steps": int(study.num_steps),
      "learning_rates": setup.learning_rates,
      "gap_pairs": len(setup.pair_captions),
      "seed": int(setup.config.seed),
    }
  )


def run_fig4b(study: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Theorem 3.3 on real data (the paper's Fig. 4b): does Δ rise over the first steps?

  ``num_inits`` random initialisations of the towers (init i's key is fold_in(seed, i)) each
  take ``num_steps`` train steps on the same batches: the first ``num_steps`` training batches
  of the base config with seed 0, from the host pipeline (``data.train_batches``, clean pairs,
  no crops). Δ = ‖mean(h^x) − mean(h^y)‖ is measured on the trainer's fixed ``gap_512`` sample
  of held-out pairs before and after; the rise is Δ(num_steps) − Δ(0).

  Learning rate: see :func:`fig4b_learning_rate`. The regime warms up over 100 steps, so its
  own schedule gives the first 10 steps lr(k) = 5e-4·k/100, at most 4.5e-5; by default the
  10 steps instead run at the regime's peak 5e-4 (towers; ν at its ``lr_multiplier`` times
  that), as a run past its warm-up would. The rates used are recorded in results.json.

  One compiled step serves every initialisation: inits run ``fig4b_chunk`` at a time under
  ``vmap`` (bounding memory); the last chunk is padded with repeats, which are discarded.
  Results are written after every chunk, and a rerun with the same settings resumes.
  """
  import jax

  if int(study.num_inits) < 1 or int(study.num_steps) < 1 or int(study.fig4b_chunk) < 1:
    raise ConfigError(
      f"num_inits={study.num_inits}, num_steps={study.num_steps} and "
      f"fig4b_chunk={study.fig4b_chunk} must be positive integers"
    )
  setup = fig4b_setup(study, workdir)
  fingerprint = fig4b_fingerprint(study, setup)
  done = _fig4b_previous(workdir, fingerprint)
  todo = [i for i in range(int(study.num_inits)) if i not in done]
  init_chunk, step_chunk, embed_chunk = _fig4b_functions(setup)
  images, tokens = jax.numpy.asarray(setup.pair_images), jax.numpy.asarray(setup.pair_tokens)
  batches = [jax.tree.map(jax.numpy.asarray, b) for b in setup.batches]
  chunk = int(study.fig4b_chunk)
  bar = tqdm(
    total=int(study.num_inits),
    initial=int(study.num_inits) - len(todo),
    desc="fig4b inits",
    unit="init",
    disable=not study.progress_bar,
    dynamic_ncols=True,
  )
  for start in range(0, len(todo), chunk):
    indices = todo[start : start + chunk]
    padded = indices + [indices[-1]] * (chunk - len(indices))  # one compiled shape for every chunk
    keys = jax.numpy.stack([init_key(int(setup.config.seed), i) for i in padded])
    states = init_chunk(keys)
    before = jax.device_get(embed_chunk(states, images, tokens))
    batch_gaps, taus = [], []
    for batch in batches:
      states, logs = step_chunk(states, batch)
      batch_gaps.append(np.asarray(logs["gap"])[:, 0])
      taus.append(np.asarray(logs["tau"])[:, 0])
    after = jax.device_get(embed_chunk(states, images, tokens))
    for j, index in enumerate(indices):
      done[index] = {
        "init": index,
        "gap_0": gap_f64(before[0][j], before[1][j]),
        "gap_final": gap_f64(after[0][j], after[1][j]),
        "batch_gaps": [float(g[j]) for g in batch_gaps],
        "taus": [float(t[j]) for t in taus],
      }
    _write_fig4b(study, workdir, setup, fingerprint, done)
    bar.update(len(indices))
  bar.close()
  return _write_fig4b(study, workdir, setup, fingerprint, done, final=True)


def _fig4b_previous(workdir: str, fingerprint: dict[str, Any]) -> dict[int, dict[str, Any]]:
  """The per-init results of an earlier run of the same Fig. 4b, else nothing."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return {}
  previous = load_results(workdir)
  if previous.get("study") != "fig4b" or previous.get("fingerprint") != fingerprint:
    return {}
  return {int(r["init"]): r for r in previous.get("inits", [])}


def fig4b_summary(done: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  """Δ(0), Δ(final), rises, the share of rising inits and the mean rise, in init order."""
  inits = [done[i] for i in sorted(done)]
  gap0 = np.asarray([r["gap_0"] for r in inits], np.float64)
  gap1 = np.asarray([r["gap_final"] for r in inits], np.float64)
  rises = gap1 - gap0
  return {
    "gap_0": gap0.tolist(),
    "gap_final": gap1.tolist(),
    "rises": rises.tolist(),
    "share_rising": float(np.mean(rises > 0)) if len(rises) else None,
    "mean_rise": float(rises.mean()) if len(rises) else None,
    "std_rise": float(rises.std(ddof=1)) if len(rises) > 1 else 0.0,
  }


def _write_fig4b(study, workdir, setup: Fig4bSetup, fingerprint, done, final: bool = False) -> dict[str, Any]:
  from modgap_jax.plots import study as study_plots

  config = setup.config
  results = {
    "study": "fig4b",
    "cell": study_cells(study)[0],
    "base_config": study.base_config,
    "base_overrides": flatten_overrides(study.base_overrides),
    "num_inits": len(done),
    "num_inits_planned": int(study.num_inits),
    "complete": len(done) >= int(study.num_inits),
    "num_steps": int(study.num_steps),
    "batch_size": int(config.batch_size),
    "gap_pairs": len(setup.pair_captions),
    "learning_rates": setup.learning_rates,
    "nu_learning_rates": [lr * float(config.temperature.lr_multiplier) for lr in setup.learning_rates],
    "lr": setup.learning_rates[0],
    "fig4b_lr": float(study.fig4b_lr),
    "lr_note": setup.lr_note,
    "paper": PAPER_FIG4B,
    "fingerprint": fingerprint,
    **fig4b_summary(done),
    "inits": [done[i] for i in sorted(done)],
  }
  run_io.write_json(os.path.join(workdir, "results.json"), results)
  if final:
    run_io.write_text(os.path.join(workdir, "table.md"), render_fig4b(results))
    study_plots.plot_fig4b(results, os.path.join(workdir, "fig4b.png"))
  return load_results(workdir)


def render_fig4b(results: dict[str, Any]) -> str:
  """Markdown summary of Fig. 4b beside the paper's numbers."""
  paper = results["paper"]
  share = results["share_rising"]
  return "\n".join(
    [
      "# Study `fig4b`: the gap rises at the start (Theorem 3.3)",
      "",
      f"{results['num_inits']} random initialisations of `{results['cell']}`, each {results['num_steps']} steps on "
      f"the same batches (batch {results['batch_size']}); Δ on {results['gap_pairs']} fixed held-out pairs.",
      f"Learning rate: {results['lr_note']}; towers' rate per step {results['learning_rates']}.",
      "",
      "| | ours | paper (Fig. 4b) |",
      "|---|---|---|",
      f"| initialisations | {results['num_inits']} | {paper['num_inits']} |",
      f"| steps | {results['num_steps']} | {paper['num_steps']} |",
      f"| share with Δ rising | {'—' if share is None else f'{100 * share:.0f} %'} | "
      f"{100 * paper['share_rising']:.0f} % |",
      f"| mean rise Δ(end) − Δ(0) | {_num(results['mean_rise'])} ± {_num(results['std_rise'])} | "
      f"≈ {paper['mean_rise']} |",
      f"| mean Δ(0) → Δ(end) | {_num(np.mean(results['gap_0']))} → {_num(np.mean(results['gap_final']))} | |",
      "",
      "Figure: `fig4b.png` (histogram of the rises).",
      "",
    ]
  )


# ----------------------------------------------------------------------------------------
# table.md
# ----------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
  return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def ours(cell_entry: dict[str, Any], key: str, percent: bool = False) -> str:
  """ "mean ± std" of a metric over the finished seeds (fractions × 100 when ``percent``)."""
  m = cell_entry["metrics"].get(key)
  if not m or m["mean"] is None:
    return "—"
  scale, digits = (100.0, 2) if percent else (1.0, 3)
  text = f"{m['mean'] * scale:.{digits}f}"
  if sum(v is not None for v in m["values"]) > 1:
    text += f" ± {m['std'] * scale:.{digits}f}"
  return text


def _paper(value: float | None) -> str:
  return "—" if value is None else f"{value}"


def paper_key(cell: str) -> str:
  """Table 2's column of a cell: every partial hard swap is the paper's HS column."""
  return "hs" if cell.startswith("hs=") and cell != "hs=1.0" else cell


TABLE2_ROWS = (  # (label, our key, the paper's key, ours in percent)
  ("gap ↓", "gap", "gap", False),
  ("uniformity (−W2) ↑", "uniformity_w2", "uniformity", False),
  ("zero-shot ↑", "zeroshot_top1", "zeroshot", True),
  ("linear probe ↑", "linear_probe_top1", "probe", True),
  ("image retrieval R@1 ↑", "t2i_r1", "t2i", True),
  ("text retrieval R@1 ↑", "i2t_r1", "i2t", True),
)


def render_table2(cells: list[dict[str, Any]]) -> list[str]:
  """Rows: Table 2's metrics; columns: each cell, ours then the paper's."""
  lines = [
    "| metric | " + " | ".join(f"{c['cell']} ours | paper" for c in cells) + " |",
    "|---|" + "---|---|" * len(cells),
  ]
  for label, key, paper_name, percent in TABLE2_ROWS:
    cols = [
      f"{ours(c, key, percent)} | {_paper(PAPER_TABLE2.get(paper_key(c['cell']), {}).get(paper_name))}" for c in cells
    ]
    lines.append(f"| {label} | " + " | ".join(cols) + " |")
  return lines


def render_table3(cells: list[dict[str, Any]]) -> list[str]:
  """Rows: the cells (τ values, then the full hard swap); columns: Table 3's, ours beside the paper's."""
  lines = [
    "| cell | gap ours | paper | image R@1 ours | paper | text R@1 ours | paper | linear probe ours | paper |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for c in cells:
    p = PAPER_TABLE3.get(c["cell"], {})
    label = f"τ = {c['cell'][4:]}" if c["cell"].startswith("flt=") else c["cell"]
    lines.append(
      f"| {label} | {ours(c, 'gap')} | {_paper(p.get('gap'))} | {ours(c, 't2i_r1', True)} "
      f"| {_paper(p.get('t2i'))} | {ours(c, 'i2t_r1', True)} | {_paper(p.get('i2t'))} "
      f"| {ours(c, 'linear_probe_top1', True)} | {_paper(p.get('probe'))} |"
    )
  return lines


def render_table(results: dict[str, Any]) -> str:
  """table.md: ours (mean ± std over the finished seeds) beside the paper's Table 2 or 3."""
  cells = results["cells"]
  seeds = ", ".join(f"{c['cell']}: {c['num_seeds']}/{c['seeds_planned']}" for c in cells)
  table = "Table 3" if results["study"] == "table3" else "Table 2"
  lines = [
    f"# Study `{results['study']}`: ours beside the paper's {table}",
    "",
    f"Ours: mean ± std (sample std, ddof = 1) over the finished seeds ({seeds}). Our retrieval R@1, "
    "zero-shot and linear-probe accuracies are fractions, shown here × 100 as percentages like the paper's.",
    "Image retrieval = text→image R@1 (`t2i_r1`), text retrieval = image→text R@1 (`i2t_r1`). "
    "The paper trains CLIP RN50 on MSCOCO; compare trends, not levels.",
    "",
  ]
  lines += render_table3(cells) if results["study"] == "table3" else render_table2(cells)
  lines += ["", "Final τ: " + ", ".join(f"{c['cell']} {ours(c, 'tau')}" for c in cells) + "."]
  swaps = [c for c in cells if c.get("expected_swaps") is not None]
  if swaps:
    lines += [
      "",
      "Expected swapped steps (p × steps): "
      + ", ".join(f"{c['cell']}: {c['swap_p']:g} × {c['num_steps']} = {c['expected_swaps']:.1f}" for c in swaps)
      + f". The paper's HS: p = {HS_PAPER_P:g} × ~{PAPER_STEPS} steps = {HS_PAPER_P * PAPER_STEPS:.1f}.",
    ]
  if "r2" in results:
    lines += [
      "",
      f"Theorem 3.2 (Fig. 4a): Δ(t) = a + b·(−1/log²t) fitted by least squares over "
      f"{len(results['points'])} eval points with t > {results['fit_min_step']} (after the warm-up): "
      f"R² = {_num(results['r2'])}, b = {_num(results['slope'], 4)}, a = {_num(results['intercept'], 4)}. "
      "Figure: `fig4a.png`.",
    ]
  lines += ["", "Command for one seed of each cell ({seed}, {workdir} to fill in):", ""]
  lines += [f"- `{c['cell']}`: `{c['command']}`" for c in cells]
  return "\n".join(lines) + "\n"


def load_results(workdir: str) -> dict[str, Any]:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)
