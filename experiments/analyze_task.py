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
``source``), ``report.md``, and ``pca.png``, ``sphere.png``, ``shift.png``,
``gap_spectrum.png``, ``cosine_hist.png``. Several inputs write ``compare.json`` (the table and
every input's full analysis), ``compare.md`` and ``compare.png``.

Every input is loaded and checked before anything is written: a bad file is a one-line
ConfigError that names the file, the key and the expected shape.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
from ml_collections import ConfigDict
from tqdm import tqdm

from modgap_jax import analysis, run_io
from modgap_jax.errors import ConfigError, check_range
from modgap_jax.plots import analysis as plots

NPZ_KEYS = ("image_emb", "text_emb", "text_to_image", "labels", "class_text_emb")
FIGURES = ("pca.png", "sphere.png", "shift.png", "gap_spectrum.png", "cosine_hist.png")


# ----------------------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------------------


def load_npz(path: str) -> dict[str, Any]:
  """The arrays of an embeddings ``.npz``, checked (see the module docstring for the keys)."""
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise ConfigError(
      f"embeddings file {path!r} is not a readable .npz ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''})"
    ) from None
  for key in ("image_emb", "text_emb"):
    if key not in arrays:
      shape = "[N, d]" if key == "image_emb" else "[M, d]"
      raise ConfigError(
        f"embeddings file {path!r} has no key {key!r} (float {shape}); it holds "
        f"{', '.join(map(repr, sorted(arrays))) or 'nothing'}"
      )
  out = {k: arrays.get(k) for k in NPZ_KEYS}
  out["ignored_keys"] = sorted(set(arrays) - set(NPZ_KEYS))
  return out


def embed_run(run_dir: str) -> dict[str, Any]:
  """Restores a training workdir's latest checkpoint and embeds its eval split.

  Returns the ``load_npz`` keys (labels and class prompts when the run's dataset has them) and
  ``run_beta``, the β the checkpoint had learned.
  """
  # Training imports are heavy and only this input kind needs them.
  import flax.jax_utils
  import jax

  from modgap_jax import data, models, train
  from modgap_jax.train_step import make_optimizer

  with open(os.path.join(run_dir, "config.json")) as f:
    config = ConfigDict(json.load(f))
  data_dir = config.dataset.data_dir or None
  train_split = data.load_examples(config.dataset.name, config.dataset.train_split, data_dir)
  eval_split = data.load_examples(config.dataset.name, config.dataset.eval_split, data_dir)
  tokenizer = train.load_tokenizer(config, train_split, run_dir)
  _, total_steps, warmup_steps = train.plan_steps(config, len(train_split))
  _, spec = make_optimizer(config, total_steps, warmup_steps)
  model = models.create_model(config.model, spec.nu_init)
  variables = restore_variables(run_dir)
  num_devices = jax.local_device_count()
  evaluator = train.Evaluator(model, config, train_split, eval_split, num_devices, tokenizer)
  nu = variables["params"]["temperature"]["nu"]
  variables = flax.jax_utils.replicate(variables)
  image_emb, labels = evaluator.embed_images(variables, eval_split)
  text_emb, text_to_image = evaluator.embed_texts(variables, eval_split)
  out = {
    "image_emb": image_emb,
    "text_emb": text_emb,
    "text_to_image": text_to_image,
    "labels": None,
    "class_text_emb": None,
    "ignored_keys": [],
    "run_beta": float(spec.reparam.beta(nu)),
  }
  if evaluator.label_key:
    out["labels"] = np.asarray(labels[evaluator.label_key])
    if evaluator.class_tokens is not None:
      out["class_text_emb"] = evaluator.embed_tokens(variables, evaluator.class_tokens).reshape(
        *evaluator.class_shape, -1
      )
  return out


def restore_variables(run_dir: str) -> dict[str, Any]:
  """``{'params', 'batch_stats'}`` of a run's latest checkpoint, read-only and without a template.

  Not ``checkpoint.Checkpointer.restore``: that one needs the current code's exact train-state
  tree (an older run's optimizer state may differ) and deletes checkpoints it cannot read,
  which an analysis of someone's run must never do.
  """
  import jax
  import orbax.checkpoint as ocp

  directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True))
  try:
    step = manager.latest_step()
    if step is None:
      raise ConfigError(f"run directory {run_dir!r} has no checkpoint under checkpoints/")
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:  # orbax reports damage with many exception types
      raise ConfigError(f"run directory {run_dir!r}: checkpoint {step} is unreadable ({type(e).__name__})") from None
  finally:
    manager.close()
  if not isinstance(state, dict) or "params" not in state:
    raise ConfigError(f"run directory {run_dir!r}: checkpoint {step} holds no 'params'")
  variables = {"params": state["params"]}
  if jax.tree_util.tree_leaves(state.get("batch_stats")):
    variables["batch_stats"] = state["batch_stats"]
  return variables


def input_kind(path: str) -> str:
  """'npz', 'dir_npz' or 'run' for a valid input path; a one-line ConfigError otherwise."""
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, "embeddings.npz")):
      return "dir_npz"
    if all(os.path.exists(os.path.join(path, p)) for p in ("config.json", "tokenizer.json", "checkpoints")):
      return "run"
    raise ConfigError(
      f"embeddings={path!r} is a directory without embeddings.npz and is not a modgap_jax run "
      f"(config.json, tokenizer.json, checkpoints/)"
    )
  if not os.path.isfile(path):
    raise ConfigError(f"embeddings={path!r}: no such file or directory")
  if not path.endswith(".npz"):
    raise ConfigError(f"embeddings={path!r} must be an .npz file (keys {', '.join(NPZ_KEYS)}) or a run directory")
  return "npz"


def load_input(path: str) -> dict[str, Any]:
  """The checked arrays of one input (any kind); the ConfigError names the file."""
  kind = input_kind(path)
  if kind == "run":
    raw = embed_run(path)
  else:
    raw = load_npz(os.path.join(path, "embeddings.npz") if kind == "dir_npz" else path)
  try:
    analysis.validate_inputs(
      raw["image_emb"], raw["text_emb"], raw["text_to_image"], raw["labels"], raw["class_text_emb"]
    )
  except ConfigError as e:
    raise ConfigError(f"embeddings file {path!r}: {e}") from None
  raw["kind"] = kind
  return raw


def split_paths(spec: str) -> list[str]:
  paths = [p.strip() for p in str(spec or "").split(",") if p.strip()]
  if not paths:
    raise ConfigError(
      "embeddings is empty; set --config.embeddings=FILE.npz (or a run directory, or A,B,... to compare)"
    )
  return paths


def input_names(paths: list[str]) -> list[str]:
  """Short distinct names: the base name without .npz, with parent folders added until unique."""
  parts = [os.path.normpath(p).split(os.sep) for p in paths]
  for depth in range(1, max(len(p) for p in parts) + 1):
    names = [os.path.join(*p[-depth:]) for p in parts]
    names = [n[:-4] if n.endswith(".npz") else n for n in names]
    if len(set(names)) == len(names):
      return names
  return [f"{i}:{p}" for i, p in enumerate(paths)]


# ----------------------------------------------------------------------------------------
# Options.
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------


def _fmt(v) -> str:
  if v is None:
    return "n/a"
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, int):
    return str(v)
  return f"{v:.4f}" if np.isfinite(v) else "n/a"


REPORT_SECTIONS = (
  (
    "MATH.md §2 metrics",
    (
      ("modality gap Δ (all caption pairs)", ("gap",)),
      ("Δ on 512 random pairs", ("gap_512",)),
      ("alignment ↓", ("alignment",)),
      ("CLIP loss at β (one batch)", ("loss",)),
      ("uniformity −W2 image / text / union ↑", ("uniformity_w2_image", "uniformity_w2_text", "uniformity_w2_union")),
      (
        "uniformity Wang–Isola image / text / union ↓",
        ("uniformity_wi_image", "uniformity_wi_text", "uniformity_wi_union"),
      ),
      ("image→text R@1 / R@5 / R@10", ("i2t_r1", "i2t_r5", "i2t_r10")),
      ("text→image R@1 / R@5 / R@10", ("t2i_r1", "t2i_r5", "t2i_r10")),
      ("zero-shot top-1", ("zeroshot_top1",)),
      ("linear probe top-1 (half/half split)", ("linear_probe_top1",)),
    ),
  ),
  (
    "Cone effect",
    (
      ("mean cos, distinct images", ("cone_image",)),
      ("mean cos, distinct captions", ("cone_text",)),
      ("mean cos, all image–caption combinations", ("cross_cosine",)),
      ("mean cos, paired", ("paired_cosine",)),
    ),
  ),
  ("Where the gap lives", (("coordinates carrying 50 % / 90 % of ‖g‖²", ("gap_dims_50", "gap_dims_90")),)),
  (
    "Separability",
    (
      ("image-vs-text linear classifier, held-out accuracy", ("modality_separability",)),
      ("effective rank image / text", ("effective_rank_image", "effective_rank_text")),
    ),
  ),
  (
    "Gap shift and the parallel model (MATH.md §3.1)",
    (
      ("λ minimising the loss / its loss", ("shift_best_lambda", "shift_best_loss")),
      ("γ fitted along ĝ / common offset / R²", ("parallel_gamma", "parallel_offset", "parallel_r2")),
      ("κ = β(1 − γ²)", ("parallel_kappa",)),
      ("Δ ≥ 2|γ|", ("parallel_bound_holds",)),
    ),
  ),
)


def render_report(result: Mapping[str, Any]) -> str:
  """A Markdown report of one analysis."""
  lines = [
    f"# Modality gap analysis: `{result['source']}`",
    "",
    f"- {result['n_images']} images, {result['n_texts']} captions, d = {result['dim']}, β = {result['beta']:g}",
    f"- input row norms: image [{result['input_norm_image_min']:.4g}, {result['input_norm_image_max']:.4g}], "
    f"text [{result['input_norm_text_min']:.4g}, {result['input_norm_text_max']:.4g}]"
    + (
      "; **the norms varied**, so every row was L2-normalised first"
      if result["norms_varied"]
      else ("; rows were L2-normalised" if not result["inputs_unit_norm"] else "; rows were unit already")
    ),
  ]
  if result.get("ignored_keys"):
    lines.append(f"- ignored keys of the file: {', '.join(result['ignored_keys'])}")
  for title, rows in REPORT_SECTIONS:
    lines += ["", f"## {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {' / '.join(_fmt(result.get(k)) for k in keys)} |" for label, keys in rows]
  lines += [
    "",
    "Recall after removing the top gap coordinates and re-normalising:",
    "",
    "| removed | dims | Δ | i2t R@1 | t2i R@1 | i2t R@5 | t2i R@5 |",
    "|---|---|---|---|---|---|---|",
  ]
  lines += [
    f"| {q} % of ‖g‖² | {r['dims']} | {_fmt(r['gap'])} | {_fmt(r['i2t_r1'])} | {_fmt(r['t2i_r1'])} | "
    f"{_fmt(r['i2t_r5'])} | {_fmt(r['t2i_r5'])} |"
    for q, r in (("50", result["gap_removed_50"]), ("90", result["gap_removed_90"]))
  ]
  shift = result["shift"]
  lines += [
    "",
    "Gap shift (x − λg/2, y + λg/2, re-normalised), every fifth λ:",
    "",
    "| λ | loss | i2t R@1 | t2i R@1 | Δ |" + (" zero-shot |" if "zeroshot_top1" in shift else ""),
    "|---|---|---|---|---|" + ("---|" if "zeroshot_top1" in shift else ""),
  ]
  for i in range(0, len(shift["lambda"]), 5):
    row = (
      f"| {shift['lambda'][i]:+.2f} | {_fmt(shift['loss'][i])} | {_fmt(shift['i2t_r1'][i])} | "
      f"{_fmt(shift['t2i_r1'][i])} | {_fmt(shift['gap'][i])} |"
    )
    lines.append(row + (f" {_fmt(shift['zeroshot_top1'][i])} |" if "zeroshot_top1" in shift else ""))
  lines += ["", "Figures: " + ", ".join(f"`{f}`" for f in FIGURES) + ". Every number: `analysis.json`.", ""]
  return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# The task.
# ----------------------------------------------------------------------------------------


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
