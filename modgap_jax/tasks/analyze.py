"""``config.task = 'analyze'``: measure the modality gap of embeddings from anywhere.

``config.embeddings`` names one input, or several separated by commas (compare mode). An
input is one of:

- **an ``.npz`` file** with
  - ``image_emb``: float [N, d], one row per image;
  - ``text_emb``: float [M, d], one row per caption;
  - ``text_to_image`` (optional): int [M], the image row of each caption; without it
    caption i belongs to image i and M must equal N;
  - ``labels`` (optional): int [N], each image's class (enables the linear probe);
  - ``class_text_emb`` (optional, needs ``labels``): float [C, d], or [C, T, d] for T prompt
    templates per class (enables zero-shot, MATH.md §2).
  Rows may have any nonzero norm: they are normalised, and the report says when norms varied.
  Other keys are ignored (and listed in ``analysis.json`` under ``ignored_keys``).
- **a directory holding ``embeddings.npz``**: that file, as above.
- **a modgap_jax training workdir** (``config.json``, ``tokenizer.json`` and ``checkpoints/``):
  the latest checkpoint is restored and the run's eval split embedded, with the run's
  zero-shot prompts when it has them; nothing is written into the run directory.

One input writes into ``workdir``: ``analysis.json`` (every key of ``analysis.analyze`` plus
``source``), ``report.md`` (:mod:`.analyze_report`), and ``pca.png``, ``sphere.png``, ``shift.png``,
``gap_spectrum.png``, ``cosine_hist.png``. Several inputs write ``compare.json`` (the table and
every input's full analysis), ``compare.md`` and ``compare.png``.

Every input is loaded and checked before anything is written: a bad file is a one-line
ConfigError that names the file, the key and the expected shape.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from modgap_jax import analysis, run_io
from modgap_jax.errors import ConfigError, check_range
from modgap_jax.plots import analysis as plots
from modgap_jax.tasks.analyze_inputs import input_names, load_input, split_paths
from modgap_jax.tasks.analyze_report import FIGURES, render_report

__all__ = ["FIGURES", "analyze_options", "run"]


def analyze_options(config: ConfigDict) -> dict[str, Any]:
  """The keyword arguments of ``analysis.analyze`` from the config, checked."""
  check_range("beta", float(config.beta), 0.0, None, low_inclusive=False)
  shift = config.shift
  if int(shift.num) < 21:
    raise ConfigError(f"shift.num={shift.num} is out of range; it must be >= 21")
  for field in ("chunk_size", "hist_bins", "gap_pairs", "probe_steps"):
    if int(config[field]) < 1:
      raise ConfigError(f"{field}={config[field]!r} is out of range; it must be >= 1")
  check_range("probe_l2", float(config.probe_l2), 0.0, None, low_inclusive=False)
  check_range("figures.max_pairs", int(config.figures.max_pairs), 2, None)
  return dict(
    beta=float(config.beta),
    lambdas=analysis.shift_grid(int(shift.num), float(shift.low), float(shift.high)),
    chunk_size=int(config.chunk_size),
    hist_bins=int(config.hist_bins),
    hist_max_rows=int(config.hist_max_rows),
    gap_pairs=int(config.gap_pairs),
    probe_l2=float(config.probe_l2),
    probe_steps=int(config.probe_steps),
    seed=int(config.seed),
  )


def _analyze_input(raw: Mapping[str, Any], source: str, options: Mapping[str, Any], progress: bool) -> dict:
  wrap = (lambda seq: tqdm(seq, desc=f"shift {os.path.basename(source)}", unit="λ")) if progress else None
  result = analysis.analyze(
    raw["image_emb"],
    raw["text_emb"],
    text_to_image=raw["text_to_image"],
    labels=raw["labels"],
    class_text_emb=raw["class_text_emb"],
    progress=wrap,
    **options,
  )
  result["source"] = source
  result["ignored_keys"] = list(raw.get("ignored_keys", []))
  if raw.get("run_beta") is not None:
    result["run_beta"] = raw["run_beta"]
  return result


def _pairs_for_figures(raw: Mapping[str, Any], config: ConfigDict):
  m = len(raw["text_emb"])
  t2i = np.arange(m) if raw["text_to_image"] is None else np.asarray(raw["text_to_image"])
  return plots.sample_pairs(
    raw["image_emb"], raw["text_emb"], t2i, max_pairs=int(config.figures.max_pairs), seed=int(config.seed)
  )


def run(config: ConfigDict, workdir: str) -> dict:
  """Analyses one input, or compares several; returns the analysis (or the compare dict)."""
  paths = split_paths(config.embeddings)
  options = analyze_options(config)
  raws = [load_input(p) for p in paths]  # every input checked before the workdir is touched
  names = input_names(paths)
  results = [_analyze_input(raw, path, options, bool(config.progress_bar)) for raw, path in zip(raws, paths)]

  os.makedirs(workdir, exist_ok=True)
  if len(paths) == 1:
    result, raw = results[0], raws[0]
    x, y = _pairs_for_figures(raw, config)
    title = f"{names[0]}: Δ = {result['gap']:.3f}"
    plots.plot_pca(x, y, os.path.join(workdir, "pca.png"), title=title)
    plots.plot_sphere(x, y, os.path.join(workdir, "sphere.png"), title=title)
    plots.plot_shift(result, os.path.join(workdir, "shift.png"), title=names[0])
    plots.plot_gap_spectrum(result, os.path.join(workdir, "gap_spectrum.png"), title=names[0])
    plots.plot_cosine_histograms(result, os.path.join(workdir, "cosine_hist.png"), title=f"{names[0]}: cosines")
    run_io.write_text(os.path.join(workdir, "report.md"), render_report(result))
    run_io.write_json(os.path.join(workdir, "analysis.json"), result)
    return result

  table = analysis.compare(dict(zip(names, results)))
  plots.plot_compare(
    [(name, result, *_pairs_for_figures(raw, config)) for name, result, raw in zip(names, results, raws)],
    os.path.join(workdir, "compare.png"),
  )
  sources = "\n".join(f"- `{name}`: `{path}`" for name, path in zip(names, paths))
  run_io.write_text(
    os.path.join(workdir, "compare.md"),
    f"# Modality gap analysis: {len(paths)} inputs\n\n{sources}\n\n"
    f"{analysis.compare_markdown(table)}\nβ = {options['beta']:g}. Figure: `compare.png`; every "
    f"number of every input: `compare.json`.\n",
  )
  out = {"table": table, "analyses": dict(zip(names, results))}
  run_io.write_json(os.path.join(workdir, "compare.json"), out)
  return out
