r"""Gradient-flow simulations of the paper's theory (MATH.md §3), one preset per claim.

Run:

    python -m experiments.main --config configs/dynamics.py:<preset> --workdir runs/dynamics_<preset>

Presets:

- ``figure2``: the paper's synthetic picture (Fig. 1/2). Free features on S² (d = 3), five
  mismatched pairs, learned τ: Δ and τ first grow, then shrink once every pair is matched.
- ``lemma31``: the invariant I of Lemma 3.1 along reduced flows for exp, exp with c = 0.1,
  exp_scaled and softplus, and along a parallel flow whose u, v move (uniform init).
- ``theorem32``: slow closure with β = e^ν (reduced model, matched, to t = 1e10): β linear in
  log t, γ·β² constant, γ·log²t bounded, and the log-log exponent of γ.
- ``theorem33``: the gap grows at the start, on 100 uniform random parallel inits.
- ``reparams``: exp, exp_scaled, softplus, fixed τ, a τ schedule, a capped β and c = 0.1, on
  one reduced flow; the softplus rate question of MATH.md §3.4.

Every field can be overridden on the command line, e.g.
``--config.temperature.reparam=softplus --config.batch=16``. ``variants`` lists, per named
run, the fields it overrides; all runs share the time grid and are stacked along the batch
axis of ``trajectory.npz`` (``summary.json`` names each run's rows).
"""

from ml_collections import ConfigDict

from modgap_jax.errors import ConfigError

PRESETS = ("figure2", "lemma31", "theorem32", "theorem33", "reparams")


def base_config() -> ConfigDict:
  """Defaults shared by every preset: a reduced, matched, learned-exp flow to t = 1e6."""
  config = ConfigDict()
  config.task = "dynamics"
  config.preset = ""
  # reduced | parallel | free (MATH.md §3.1–3.2); the reduced model's RHS: closed_form | autodiff.
  config.model = "reduced"
  config.reduced_rhs = "closed_form"
  config.n = 8
  config.d = 8
  config.batch = 4
  config.seed = 0
  # matched | mismatched | uniform; gamma0 for reduced/parallel, gap0 for free.
  config.init = ConfigDict(dict(kind="matched", gamma0=0.3, gap0=0.3))
  # The trainer's temperature fields, in flow time: mode learned | fixed | scheduled;
  # lr_multiplier is the rate c on ν; tau_init is τ₀; beta_cap None (or 0) leaves a learned
  # ν uncapped, the theorems' setting; the schedule runs over t ∈ [0, duration].
  config.temperature = ConfigDict(
    dict(
      reparam="exp",
      scale=2.0,
      mode="learned",
      tau_init=0.07,
      lr_multiplier=1.0,
      beta_cap=0.0,
      schedule=dict(kind="linear", tau_start=0.01, tau_end=0.05, duration=100.0),
    )
  )
  # grid: log (0, then num−1 points from t_min to t_max) | linear (num points on [0, t_max]).
  config.time = ConfigDict(dict(grid="log", t_min=1e-3, t_max=1e6, num=121))
  # atol far below any γ of interest: odeint's error test is atol + rtol·|y| per component.
  # mxstep stays inf: odeint extrapolates silently past a finite one (see dynamics.simulate).
  config.solver = ConfigDict(dict(rtol=1e-10, atol=1e-300, mxstep=float("inf")))
  config.analysis = ConfigDict(
    dict(
      window=(1e4, 1e6),  # Theorem 3.2 / rate fits
      decay_window=(1e1, 1e3),  # fixed τ: exponential fit of log γ against t
      exponent_edges=(1e2, 1e3, 1e4, 1e5, 1e6),  # local exponents d log γ / d log log t
      t_early=1e-2,  # Theorem 3.3: Δ(t_early) − Δ(0)
    )
  )
  config.snapshot_times = (0.0,)  # sphere snapshots (d = 3 only); the nearest grid times
  config.variants = ConfigDict()
  return config


def _figure2(config: ConfigDict) -> None:
  config.model = "free"
  # Seed 22's first trajectory (the one drawn) peaks at t ≈ 1.25 and is matched by t = 3.
  config.n, config.d, config.batch, config.seed = 5, 3, 8, 22
  config.init.update(dict(kind="mismatched", gap0=0.2))
  config.temperature.tau_init = 0.3
  config.time.update(dict(grid="linear", t_max=10.0, num=201))
  config.solver.update(dict(rtol=1e-8, atol=1e-10))
  config.analysis.update(dict(t_early=0.5))
  config.snapshot_times = (0.0, 0.5, 1.25, 2.5, 4.0, 10.0)


def _lemma31(config: ConfigDict) -> None:
  # To t = 1e4: softplus γ ∝ e^{−β²/c} can pass float64's floor for γ (1e-200, beyond
  # which I is NaN) by t ≈ 1e5 on some draws of S.
  config.time.t_max = 1e4
  config.analysis.window = (1e2, 1e4)
  config.analysis.exponent_edges = (1e0, 1e1, 1e2, 1e3, 1e4)
  config.variants = ConfigDict(
    dict(
      exp=dict(),
      exp_slrt=dict(temperature=dict(lr_multiplier=0.1)),
      exp_scaled=dict(temperature=dict(reparam="exp_scaled")),
      softplus=dict(temperature=dict(reparam="softplus")),
      # u, v move and pairs rematch, so ℓ' changes sign: I is still conserved.
      parallel_uniform=dict(
        model="parallel",
        n=16,
        init=dict(kind="uniform", gamma0=0.2),
        temperature=dict(tau_init=1.0),
        solver=dict(atol=1e-14),
      ),
    )
  )


def _theorem32(config: ConfigDict) -> None:
  config.batch = 8
  config.time.update(dict(t_max=1e10, num=201))
  config.analysis.exponent_edges = (1e2, 1e4, 1e6, 1e8, 1e10)


def _theorem33(config: ConfigDict) -> None:
  config.model = "parallel"
  config.n, config.d, config.batch, config.seed = 8, 3, 100, 0
  config.init.update(dict(kind="uniform", gamma0=0.2))
  config.time.update(dict(grid="linear", t_max=0.05, num=51))
  config.solver.update(dict(rtol=1e-8, atol=1e-12))
  config.analysis.update(dict(t_early=0.01))
  config.snapshot_times = (0.0, 0.01, 0.05)


def _reparams(config: ConfigDict) -> None:
  config.batch = 1
  config.variants = ConfigDict(
    dict(
      exp=dict(),
      exp_scaled=dict(temperature=dict(reparam="exp_scaled")),
      softplus=dict(temperature=dict(reparam="softplus")),
      fixed=dict(temperature=dict(mode="fixed")),
      # MATH.md §4.1's TS S3 in flow time: τ from 0.01 to 0.05 over t ∈ [0, 100].
      scheduled=dict(temperature=dict(mode="scheduled")),
      # A cap low enough to be reached by t = 1e6 (here at t ≈ 2e4; CLIP's 100 would be
      # reached only at t ≫ 1e10).
      capped=dict(temperature=dict(beta_cap=30.0)),
      exp_slrt=dict(temperature=dict(lr_multiplier=0.1)),
    )
  )


_BUILDERS = {
  "figure2": _figure2,
  "lemma31": _lemma31,
  "theorem32": _theorem32,
  "theorem33": _theorem33,
  "reparams": _reparams,
}


def get_config(arg: str | None = None) -> ConfigDict:
  """The preset named by ``arg`` (``configs/dynamics.py:<preset>``); ``figure2`` by default."""
  preset = arg or "figure2"
  if preset not in _BUILDERS:
    raise ConfigError(f"configs/dynamics.py:{preset!r} is not a preset; choose one of {', '.join(PRESETS)}")
  config = base_config()
  config.preset = preset
  _BUILDERS[preset](config)
  return config
