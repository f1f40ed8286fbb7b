"""User-facing input errors.

Every bad config field, file or dataset name raises :class:`ConfigError` with a single line
that names the field and the valid choices. ``experiments.main`` turns it into exit code 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
  """A one-line, user-facing error about an input (config field, path, dataset name)."""


def check_choice(field: str, value: Any, choices: Iterable[Any]) -> Any:
  """Returns ``value`` if it is one of ``choices``; raises a one-line ConfigError otherwise."""
  choices = tuple(choices)
  if value not in choices:
    raise ConfigError(f"{field}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}")
  return value


def check_range(field: str, value: float, low: float | None = None, high: float | None = None,
                *, low_inclusive: bool = True, high_inclusive: bool = True) -> float:
  """Returns ``value`` if it lies in the interval; raises a one-line ConfigError otherwise."""
  ok = True
  if low is not None:
    ok &= value >= low if low_inclusive else value > low
  if high is not None:
    ok &= value <= high if high_inclusive else value < high
  if not ok:
    lo = "-inf" if low is None else f"{low}"
    hi = "inf" if high is None else f"{high}"
    brackets = ("[" if low_inclusive else "(", "]" if high_inclusive else ")")
    raise ConfigError(f"{field}={value!r} is out of range; it must lie in {brackets[0]}{lo}, {hi}{brackets[1]}")
  return value
