"""A training run's outputs besides its log: ``report.md`` and its figures.

:func:`write_outputs` writes them once a run has finished (or found itself finished on
resume), from ``metrics.jsonl`` and the final evaluation's embeddings; :func:`render_report`
is the Markdown alone.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from modgap_jax import run_io, timing
from modgap_jax.plots import training as training_plots


def write_outputs(
  workdir: str,
  config: ml_collections.ConfigDict,
  final_eval: dict[str, float],
  embeddings: dict[str, np.ndarray],
  *,
  total_steps: int,
  num_devices: int,
  steps_per_dispatch: int,
  clock: timing.PhaseClock,
  resumed_from: int,
) -> None:
  """report.md and the figures, from metrics.jsonl and the final embeddings."""
  records = run_io.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  training_plots.plot_curves(records, os.path.join(workdir, "curves.png"))
  paired_images = embeddings["image"][embeddings["text_to_image"]]
  training_plots.plot_embedding_pca(
    paired_images,
    embeddings["text"],
    os.path.join(workdir, "embeddings_pca.png"),
    title=f"{config.method}: Δ = {final_eval['gap']:.3f}, τ = {final_eval['tau']:.4f}",
    seed=config.seed,
  )
  run_io.write_text(
    os.path.join(workdir, "report.md"),
    render_report(
      config,
      final_eval,
      total_steps=total_steps,
      num_devices=num_devices,
      steps_per_dispatch=steps_per_dispatch,
      clock=clock,
      resumed_from=resumed_from,
    ),
  )


REPORT_ROWS = (
  ("modality gap Δ (all pairs)", "gap"),
  ("modality gap Δ (512 random pairs)", "gap_512"),
  ("temperature τ", "tau"),
  ("eval loss", "loss"),
  ("uniformity −W2 (union) ↑", "uniformity_w2"),
  ("uniformity −W2 image / text", ("uniformity_w2_image", "uniformity_w2_text")),
  ("uniformity Wang–Isola (union) ↓", "uniformity_wi"),
  ("alignment ↓", "alignment"),
  ("text retrieval i2t R@1 / R@5 / R@10", ("i2t_r1", "i2t_r5", "i2t_r10")),
  ("image retrieval t2i R@1 / R@5 / R@10", ("t2i_r1", "t2i_r5", "t2i_r10")),
  ("zero-shot top-1", "zeroshot_top1"),
  ("linear-probe top-1", "linear_probe_top1"),
)


PHASE_LABELS = {
  "dataset": "dataset build and load, tokenizer, device-resident split",
  "setup": "model initialisation",
  "compile": "train-step compilation",
  "train": "train steps",
  "eval": "evaluation (its compilation included)",
  "checkpoint": "checkpoints (restore, save)",
  "outputs": "figures and report",
  "other": "outside the phases above (this report included; imports excluded)",
}


def render_report(
  config: ml_collections.ConfigDict,
  final_eval: dict[str, float],
  *,
  total_steps: int,
  num_devices: int,
  steps_per_dispatch: int,
  clock: timing.PhaseClock,
  resumed_from: int,
) -> str:
  """A short Markdown report of the final evaluation."""

  def fmt(key):
    keys = key if isinstance(key, tuple) else (key,)
    return " / ".join("n/a" if not np.isfinite(final_eval.get(k, np.nan)) else f"{final_eval[k]:.4f}" for k in keys)

  t = config.temperature
  lines = [
    f"# modgap_jax run: {config.method}",
    "",
    f"- dataset: `{config.dataset.name}` (train `{config.dataset.train_split}`, eval `{config.dataset.eval_split}`)",
    f"- temperature: mode `{t.mode}`, reparameterisation `{t.reparam}`, τ₀ {t.tau_init}, "
    f"β cap {t.beta_cap or 'none'}, ν lr × {t.lr_multiplier}",
    f"- swap: `{config.swap.method}` with p = {config.swap.p}",
    f"- {total_steps} steps of global batch {config.batch_size} on {num_devices} device(s); "
    f"{steps_per_dispatch} per dispatch" + (f", resumed from step {resumed_from}" if resumed_from else ""),
    "",
    "| metric | final |",
    "|---|---|",
  ]
  lines += [f"| {label} | {fmt(key)} |" for label, key in REPORT_ROWS]
  rows = clock.rows()
  total = sum(seconds for _, seconds in rows)
  lines += ["", f"Wall time of this invocation: {total:.1f} s", "", "| phase | seconds | share |", "|---|---|---|"]
  lines += [
    f"| {PHASE_LABELS.get(phase, phase)} | {seconds:.1f} | {seconds / max(total, 1e-9):.0%} |"
    for phase, seconds in rows
  ]
  lines += [
    "",
    "Figures: `curves.png` (loss, τ, Δ over steps), `embeddings_pca.png` (paper Fig. 1 style).",
    "All numbers per step: `metrics.jsonl`.",
    "",
  ]
  return "\n".join(lines)
