"""The paper's gap mitigations (MATH.md §4) as edits of a training config.

A method is named by the config argument, e.g. ``configs/default.py:ts=S3``:

- ``baseline``: learned τ, β = e^ν, τ₀ = 0.07, β ≤ 100 (CLIP).
- ``flt=τ``: fixed large temperature (MATH.md §4.1; the paper sweeps 0.01 … 0.4).
- ``ts=S0`` … ``ts=S3``: τ rises linearly from 0.01 to 0.02/0.03/0.04/0.05 over training.
- ``tr=softplus`` or ``tr=exp_scaled`` (optionally ``tr=exp_scaled:s``): reparameterised β.
- ``slrt`` (optionally ``slrt=c``): ν's learning rate × 0.1 (or × c), relative to the config's
  ``temperature.lr_multiplier``.
- ``hs=p`` / ``ss=p``: hard or soft modality swap in a p-fraction of steps (MATH.md §4.2).
"""

from __future__ import annotations

import ml_collections

from modgap_jax.errors import ConfigError, check_choice, check_range

TS_END = {"S0": 0.02, "S1": 0.03, "S2": 0.04, "S3": 0.05}
TS_START = 0.01
METHOD_SYNTAX = (
  "baseline",
  "flt=<tau>",
  "ts=S0|S1|S2|S3",
  "tr=softplus|exp_scaled[:s]",
  "slrt[=c]",
  "hs=<p>",
  "ss=<p>",
)


def _float(field: str, text: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise ConfigError(f"{field}={text!r} is not a number") from None


def apply_method(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """Edits ``config.temperature`` / ``config.swap`` in place for ``method``; returns config."""
  name, _, value = (method or "baseline").partition("=")
  name = check_choice("method", name, ("baseline", "flt", "ts", "tr", "slrt", "hs", "ss"))
  t, s = config.temperature, config.swap
  if name in ("flt", "ts", "tr", "hs", "ss") and not value:
    raise ConfigError(f"method {name!r} needs a value; valid forms: {', '.join(METHOD_SYNTAX)}")
  if name == "flt":
    t.mode = "fixed"
    t.tau_init = check_range("flt", _float("flt", value), 0.0, None, low_inclusive=False)
  elif name == "ts":
    t.mode = "scheduled"
    t.schedule.kind = "linear"
    t.schedule.tau_start = TS_START
    t.schedule.tau_end = TS_END[check_choice("ts", value, tuple(TS_END))]
  elif name == "tr":
    reparam, _, scale = value.partition(":")
    t.reparam = check_choice("tr", reparam, ("softplus", "exp_scaled"))
    if scale:
      t.scale = check_range("tr scale", _float("tr scale", scale), 1.0, None, low_inclusive=False)
  elif name == "slrt":
    # Relative to the config's own ν rate, so a regime that speeds ν up keeps SLRT at ×0.1 of it.
    t.lr_multiplier *= check_range("slrt", _float("slrt", value), 0.0, None) if value else 0.1
  elif name in ("hs", "ss"):
    s.method = "hard" if name == "hs" else "soft"
    s.p = check_range(name, _float(name, value), 0.0, 1.0)
  config.method = method or "baseline"
  return config


def temperature_defaults() -> ml_collections.ConfigDict:
  """CLIP's temperature (MATH.md §1): learned, β = e^ν, τ₀ = 0.07, β capped at 100."""
  return ml_collections.ConfigDict(
    dict(
      mode="learned",
      reparam="exp",
      scale=2.0,
      tau_init=0.07,
      beta_cap=100.0,
      lr_multiplier=1.0,
      schedule=dict(kind="linear", tau_start=TS_START, tau_end=TS_END["S3"]),
    )
  )


def swap_defaults() -> ml_collections.ConfigDict:
  """No swap; when on, swaps act after L2 normalisation and re-normalise (MATH.md §4.2 [C])."""
  return ml_collections.ConfigDict(dict(method="none", p=0.0, renormalize=True))
