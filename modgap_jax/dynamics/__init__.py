"""Gradient-flow simulator for the theory of MATH.md §3 (Lemma 3.1, Theorems 3.2 and 3.3).

``from modgap_jax import dynamics``, then:

    temperature = TemperatureSpec(Reparam("exp"), mode="learned", tau_init=0.07, beta_cap=None)
    spec = dynamics.FlowSpec(model="reduced", temperature=temperature)
    init = dynamics.InitSpec(n=8, d=8, kind="matched", gamma0=0.3)
    state0, data = dynamics.initial_states(spec, init, jax.random.PRNGKey(0), batch=4)
    records, states = dynamics.simulate(spec, state0, data, dynamics.time_grid("log", 1e6, 200))
    dynamics.analysis.invariant_drift(records["invariant"])

Everything runs in float64 under ``jax.enable_x64(True)`` scoped to each call (MATH.md §3.6);
the rest of the library stays float32. Call :func:`velocity` or :func:`loss` yourself under
that context manager to get float64.

- :mod:`.models`: states, features, the loss (``losses.clip_loss``) and the velocity −∇L.
- :mod:`.integrate`: Lemma 3.1's invariant, the records and the odeint integration.
- :mod:`.analysis`: host-side verification numbers (drift, rates, fits).
"""

from modgap_jax.dynamics import analysis
from modgap_jax.dynamics.integrate import (
  BETA_REF,
  GAMMA_FLOOR,
  TRAJECTORY_KEYS,
  initial_gap_velocity,
  invariant,
  simulate,
  temperature_integral,
  time_grid,
)
from modgap_jax.dynamics.models import (
  INITS,
  MODELS,
  FlowSpec,
  InitSpec,
  features,
  gap,
  gap_velocity,
  initial_state,
  initial_states,
  loss,
  matched_fraction,
  parallel_features,
  reduced_dloss_dkappa,
  reduced_velocity_closed_form,
  velocity,
)

__all__ = [
  "BETA_REF",
  "GAMMA_FLOOR",
  "INITS",
  "MODELS",
  "TRAJECTORY_KEYS",
  "FlowSpec",
  "InitSpec",
  "analysis",
  "features",
  "gap",
  "gap_velocity",
  "initial_gap_velocity",
  "initial_state",
  "initial_states",
  "invariant",
  "loss",
  "matched_fraction",
  "parallel_features",
  "reduced_dloss_dkappa",
  "reduced_velocity_closed_form",
  "simulate",
  "temperature_integral",
  "time_grid",
  "velocity",
]
