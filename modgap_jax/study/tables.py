"""``table.md``: a study's numbers (mean ± std over seeds) beside the paper's Table 2 or 3."""

from __future__ import annotations

import math
from typing import Any

from modgap_jax.study.paper import HS_PAPER_P, PAPER_STEPS, PAPER_TABLE2, PAPER_TABLE3


def format_number(value: float | None, digits: int = 3) -> str:
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


IMBALANCE_COLUMNS = (  # (label, our key, in percent)
  ("final τ", "tau", False),
  ("gap", "gap", False),
  ("text R@1", "i2t_r1", True),
  ("image R@1", "t2i_r1", True),
  ("zero-shot (shape)", "zeroshot_top1", True),
  ("linear probe", "linear_probe_top1", True),
)


def render_imbalance(cells: list[dict[str, Any]]) -> list[str]:
  """Rows: caption detail × method (``detail=<p>,<method>`` cells); columns: the metrics."""
  lines = [
    "| caption detail | method | " + " | ".join(label for label, _, _ in IMBALANCE_COLUMNS) + " |",
    "|---|---|" + "---|" * len(IMBALANCE_COLUMNS),
  ]
  for c in cells:
    detail, _, method = c["cell"].partition(",")
    cols = [ours(c, key, percent) for _, key, percent in IMBALANCE_COLUMNS]
    lines.append(f"| {detail.removeprefix('detail=')} | {method} | " + " | ".join(cols) + " |")
  return lines


def render_table(results: dict[str, Any]) -> str:
  """table.md: ours (mean ± std over the finished seeds) beside the paper's Table 2 or 3."""
  cells = results["cells"]
  seeds = ", ".join(f"{c['cell']}: {c['num_seeds']}/{c['seeds_planned']}" for c in cells)
  if results["study"] == "imbalance":
    title = "Study `imbalance`: caption detail against the learned τ and FLT τ = 0.04 (beyond the paper)"
  else:
    table = "Table 3" if results["study"] == "table3" else "Table 2"
    title = f"Study `{results['study']}`: ours beside the paper's {table}"
  lines = [
    f"# {title}",
    "",
    f"Ours: mean ± std (sample std, ddof = 1) over the finished seeds ({seeds}). Our retrieval R@1, "
    "zero-shot and linear-probe accuracies are fractions, shown here × 100 as percentages like the paper's.",
    "Image retrieval = text→image R@1 (`t2i_r1`), text retrieval = image→text R@1 (`i2t_r1`). "
    "The paper trains CLIP RN50 on MSCOCO; compare trends, not levels.",
    "",
  ]
  renderers = {"table3": render_table3, "imbalance": render_imbalance}
  lines += renderers.get(results["study"], render_table2)(cells)
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
      f"R² = {format_number(results['r2'])}, b = {format_number(results['slope'], 4)}, "
      f"a = {format_number(results['intercept'], 4)}. "
      "Figure: `fig4a.png`.",
    ]
    lines += _after_cap_lines(results)
  lines += ["", "Command for one seed of each cell ({seed}, {workdir} to fill in):", ""]
  lines += [f"- `{c['cell']}`: `{c['command']}`" for c in cells]
  return "\n".join(lines) + "\n"


def _after_cap_lines(results: dict[str, Any]) -> list[str]:
  """Where τ reached its cap, and the capped regime's fit log Δ = c − r·t after it."""
  if results.get("cap_step") is None:
    return ["", "τ never reached its cap: every eval point after the warm-up is in the learned-τ phase."]
  line = f"τ reached its cap at step {results['cap_step']}; the fit above stops before it. "
  after = results.get("after_cap")
  if after is None:
    return ["", line + "Fewer than 3 eval points from there on: the capped regime is not fitted."]
  return [
    "",
    line + f"After the cap, log Δ(t) = c − r·t over {len(after['points'])} eval points from step "
    f"{after['from_step']}: r = {after['rate']:.3g} per step, R² = {format_number(after['r2'])}.",
  ]
