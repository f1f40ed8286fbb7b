"""``config.task = 'dynamics'``: integrate the flows of a preset, verify, write results.

Writes into ``workdir``:

- ``trajectory.npz``: exactly the keys of ``dynamics.TRAJECTORY_KEYS`` (t, gap, gamma, nu,
  beta, tau, loss, matched_frac, invariant), each float64 [B, T]; B stacks every run of the
  preset (``summary.json`` lists each run's rows), NaN marks an undefined quantity.
- ``summary.json``: the config, per-run verification numbers and the preset's findings.
- PNG figures: ``gap_tau.png``, ``sphere_snapshots.png`` (d = 3), ``gap_rise_hist.png``,
  ``gamma_vs_inv_log2.png`` (where γ is defined).

Each file is written to a temporary name in ``workdir`` and renamed into place, so a killed
run never leaves a half-written file.
"""

from __future__ import annotations

import copy
import os
import time

import jax
import numpy as np
from absl import logging
from ml_collections import ConfigDict
from tqdm import tqdm

from modgap_jax import dynamics, run_io, temperature
from modgap_jax.dynamics import analysis, checks
from modgap_jax.errors import ConfigError
from modgap_jax.plots import dynamics as plots

NOTES = {
  "trajectory": (
    "Every key is float64 [B, T] (t repeated on each row); runs[*].rows = [start, stop) "
    "names each run's rows. NaN marks an undefined quantity."
  ),
  "gamma": "γ of the parallel structure (reduced, parallel); NaN for the free model.",
  "nu": "The ν that gives β; in scheduled mode ν(1/τ(t)) of the schedule.",
  "invariant": (
    "MATH.md §3.3: I = log|γ| − γ²/2 + ∫_1^β 2b/(c β'(ν(b))²) db (reference β_ref = 1). "
    "exp: (2/c) log β; exp_scaled: (2s²/c) log β; softplus: (2/c)[F(β) − F(1)] with "
    "F(b) = b²/2 − b/(e^b − 1) + (1 + b) log(1 − e^{−b}) − Li₂(e^{−b}) (the exact antiderivative; "
    "equal to quadrature to 1e-11). NaN for the free model, for fixed and scheduled τ (ν does not "
    "follow the gradient), and where |γ| < 1e-200 (beyond float64). With a β cap, the same "
    "formula: conserved until β reaches the cap."
  ),
  "matched_frac": "Share of i whose nearest text (largest ⟨h^x_i, h^y_j⟩) is its own.",
}


# --- config -> runs -------------------------------------------------------------------


def _merge(target: ConfigDict, overrides, path: str = "") -> None:
  """Recursively sets existing fields of ``target``; an unknown field is a ConfigError."""
  for key, value in overrides.items():
    field = f"{path}{key}"
    if key not in target:
      raise ConfigError(f"variants override unknown field {field!r}; valid fields here: {', '.join(target.keys())}")
    if isinstance(target[key], ConfigDict):
      _merge(target[key], value, field + ".")
    else:
      try:
        target[key] = value
      except TypeError as e:
        raise ConfigError(f"variants set {field}={value!r}: {e}".splitlines()[0]) from None


def plan_runs(config: ConfigDict) -> list[tuple[str, ConfigDict]]:
  """(name, config) of each run: one per entry of ``config.variants``, or the config itself."""
  base = copy.deepcopy(config)
  with base.unlocked():
    base.variants = ConfigDict()
  if not config.get("variants"):
    return [(config.get("preset") or "run", base)]
  runs = []
  for name, overrides in config.variants.items():
    run = copy.deepcopy(base)
    _merge(run, overrides)
    runs.append((name, run))
  return runs


def build(config: ConfigDict) -> tuple[dynamics.FlowSpec, dynamics.InitSpec, np.ndarray]:
  """The validated flow, init and time grid of one run (ConfigError on a bad field)."""
  temp = config.temperature
  spec = dynamics.FlowSpec(
    model=config.model,
    temperature=temperature.spec_from_config(temp, schedule_duration=float(temp.schedule.duration)),
    reduced_rhs=config.reduced_rhs,
  )
  init = dynamics.InitSpec(
    n=int(config.n),
    d=int(config.d),
    kind=config.init.kind,
    gamma0=float(config.init.gamma0),
    gap0=float(config.init.gap0),
  )
  grid = dynamics.time_grid(config.time.grid, float(config.time.t_max), int(config.time.num), float(config.time.t_min))
  if int(config.batch) < 1:
    raise ConfigError(f"batch={config.batch!r} is out of range; it must be >= 1")
  for field in ("rtol", "atol"):
    if not float(config.solver[field]) > 0:
      raise ConfigError(f"solver.{field}={config.solver[field]!r} must be > 0")
  return spec, init, grid


# --- output ---------------------------------------------------------------------------


def _nearest(t: np.ndarray, times) -> list[int]:
  return sorted({int(np.argmin(np.abs(t - s))) for s in times})


def _figures(workdir: str, runs: list[dict], config: ConfigDict) -> list[str]:
  """Draws every figure that applies; returns the file names written."""
  written = []
  curves = [(r["name"], r["records"]["t"][0], r["records"]["gap"], r["records"]["tau"]) for r in runs]
  plots.save(plots.gap_and_tau(curves), os.path.join(workdir, "gap_tau.png"))
  written.append("gap_tau.png")

  first = runs[0]
  if first["init"].d == 3:
    t = first["records"]["t"][0]
    idx = _nearest(t, config.snapshot_times or (t[0], t[-1]))
    with jax.enable_x64(True):
      feats = [
        dynamics.features(
          first["spec"], jax.tree.map(lambda x: x[0, k], first["states"]), jax.tree.map(lambda x: x[0], first["data"])
        )
        for k in idx
      ]
    images = [np.asarray(f[0]) for f in feats]
    texts = [np.asarray(f[1]) for f in feats]
    plots.save(
      plots.sphere_snapshots([float(t[k]) for k in idx], images, texts), os.path.join(workdir, "sphere_snapshots.png")
    )
    written.append("sphere_snapshots.png")

  rise = analysis.gap_rise(first["records"]["t"], first["records"]["gap"], config.analysis.t_early)
  plots.save(
    plots.gap_rise_histogram(np.asarray(rise["rises"]), rise["t_early"]), os.path.join(workdir, "gap_rise_hist.png")
  )
  written.append("gap_rise_hist.png")

  # Theorem 3.2 is about learned β = e^ν; runs whose γ falls exponentially would squash it.
  theorem_runs = [
    r
    for r in runs
    if r["spec"].has_gamma
    and r["spec"].learns_temperature
    and not r["spec"].capped
    and r["spec"].reparam.name == "exp"
    and r["spec"].rate == 1.0
  ]
  theorem_runs = theorem_runs or [r for r in runs if r["spec"].has_gamma]
  gamma_runs = [
    (r["name"], r["records"]["t"][0], r["records"]["gamma"]) for r in theorem_runs if r["records"]["t"][0, -1] > 1e2
  ]
  if gamma_runs:
    plots.save(plots.gamma_vs_inverse_log2(gamma_runs), os.path.join(workdir, "gamma_vs_inv_log2.png"))
    written.append("gamma_vs_inv_log2.png")
  return written


def run(config: ConfigDict, workdir: str) -> dict:
  """Runs every run of the preset, then writes trajectory.npz, summary.json and figures.

  Returns the summary dict (as written).
  """
  start = time.time()
  planned = [(name, cfg, *build(cfg)) for name, cfg in plan_runs(config)]  # validate all first
  grids = [grid for *_, grid in planned]
  if any(g.shape != grids[0].shape or not np.array_equal(g, grids[0]) for g in grids):
    raise ConfigError("variants must share the time grid (time.*): trajectory.npz stacks them on one axis")
  os.makedirs(workdir, exist_ok=True)

  runs = []
  for name, cfg, spec, init, grid in tqdm(planned, desc="dynamics", unit="run", disable=len(planned) == 1):
    tic = time.time()
    state0, data = dynamics.initial_states(spec, init, jax.random.PRNGKey(int(cfg.seed)), int(cfg.batch))
    records, states = dynamics.simulate(
      spec,
      state0,
      data,
      grid,
      rtol=float(cfg.solver.rtol),
      atol=float(cfg.solver.atol),
      mxstep=float(cfg.solver.mxstep),
    )
    gap_rate0 = dynamics.initial_gap_velocity(spec, state0, data)
    run_checks = checks.check_run(cfg, spec, records, gap_rate0)
    seconds = time.time() - tic
    logging.info("dynamics run %s: %.1f s", name, seconds)
    runs.append(
      dict(
        name=name,
        config=cfg,
        spec=spec,
        init=init,
        records=records,
        states=states,
        data=data,
        checks=run_checks,
        seconds=seconds,
      )
    )

  stacked = {k: np.concatenate([r["records"][k] for r in runs], axis=0) for k in dynamics.TRAJECTORY_KEYS}
  with run_io.atomic_path(os.path.join(workdir, "trajectory.npz")) as tmp, open(tmp, "wb") as f:
    np.savez(f, **stacked)  # a file object: savez would append ".npz" to a bare name

  figures = _figures(workdir, runs, config)
  rows, offset = [], 0
  for r in runs:
    b = r["records"]["gap"].shape[0]
    spec = r["spec"]
    rows.append(
      dict(
        name=r["name"],
        rows=[offset, offset + b],
        model=spec.model,
        reparam=spec.reparam.name,
        scale=spec.reparam.scale,
        mode=spec.temperature.mode,
        rate_c=spec.rate,
        beta_cap=spec.temperature.beta_cap if spec.capped else None,
        tau_init=spec.temperature.tau_init,
        init=r["config"].init.to_dict(),
        n=r["init"].n,
        d=r["init"].d,
        seconds=round(r["seconds"], 2),
        checks=r["checks"],
      )
    )
    offset += b
  summary = {
    "preset": config.get("preset"),
    "notes": NOTES,
    "trajectory": {
      "keys": list(dynamics.TRAJECTORY_KEYS),
      "shape": list(stacked["t"].shape),
      "invariant_reference_beta": dynamics.BETA_REF,
      "gamma_floor": dynamics.GAMMA_FLOOR,
    },
    "runs": rows,
    "findings": checks.findings(runs),
    "figures": figures,
    "seconds": round(time.time() - start, 2),
    "config": config.to_dict(),
  }
  run_io.write_json(os.path.join(workdir, "summary.json"), summary)  # NaN → null: strict JSON
  return run_io.to_jsonable(summary)
