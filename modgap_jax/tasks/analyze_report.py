"""The Markdown report of one analysis (``report.md`` of the analyze task)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

FIGURES = ("pca.png", "sphere.png", "shift.png", "gap_spectrum.png", "cosine_hist.png")


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
