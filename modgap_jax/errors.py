"""User-facing errors, each one line.

Every bad config field, file or dataset name raises :class:`ConfigError` with a single line
that names the field and the valid choices. ``experiments.main`` turns it into exit code 2.
A run that goes non-finite raises :class:`NonFiniteError` (exit 3), one whose files cannot be
written :class:`StorageError` (exit 4), and one asked to stop :class:`Preempted` (exit 0).
"""

from __future__ import annotations

import math
import numbers
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


def check_range(
  field: str,
  value: float,
  low: float | None = None,
  high: float | None = None,
  *,
  low_inclusive: bool = True,
  high_inclusive: bool = True,
) -> float:
  """Returns ``value`` if it lies in the interval; raises a one-line ConfigError otherwise.

  A missing bound is an open one at ±∞, so ±inf itself (like NaN) never lies in the interval.
  """
  low_inclusive &= low is not None
  high_inclusive &= high is not None
  low = -math.inf if low is None else low
  high = math.inf if high is None else high
  ok = (value >= low if low_inclusive else value > low) and (value <= high if high_inclusive else value < high)
  if not ok:
    lo, hi = ("-inf" if math.isinf(low) else f"{low}"), ("inf" if math.isinf(high) else f"{high}")
    brackets = ("[" if low_inclusive else "(", "]" if high_inclusive else ")")
    raise ConfigError(f"{field}={value!r} is out of range; it must lie in {brackets[0]}{lo}, {hi}{brackets[1]}")
  return value


def check_number(
  field: str,
  value: Any,
  low: float | None = None,
  high: float | None = None,
  *,
  low_inclusive: bool = True,
  high_inclusive: bool = True,
  integer: bool = False,
) -> float | int:
  """Returns ``value`` (an ``int`` if ``integer``) if it is a finite number in the interval.

  A bool is not a number here, and with ``integer`` only integral types pass (so 3.0 is not
  a seed); anything else raises a one-line ConfigError.
  """
  kind = numbers.Integral if integer else numbers.Real
  if isinstance(value, bool) or not isinstance(value, kind):
    raise ConfigError(f"{field}={value!r} must be {'an integer' if integer else 'a number'}")
  if not math.isfinite(value):
    raise ConfigError(f"{field}={value!r} must be finite")
  check_range(field, value, low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive)
  return int(value) if integer else value


class NonFiniteError(RuntimeError):
  """Training produced a non-finite loss, gradient norm or parameter (exit code 3)."""

  EXIT_CODE = 3

  def __init__(self, step: int, what: str, last_checkpoint: int | None, checkpoint_dir: str):
    saved = (
      f"the last good checkpoint is step {last_checkpoint} in {checkpoint_dir}"
      if last_checkpoint is not None
      else "no checkpoint was saved before it"
    )
    super().__init__(
      f"non-finite {what} at step {step}; nothing from step {step} on was saved or logged; {saved}. "
      "Lower optimizer.learning_rate, or set --config.nonfinite=skip to drop such updates"
    )
    self.step = step


class Preempted(Exception):
  """A stop signal (SIGTERM, SIGINT) was honoured: the run saved a checkpoint and stopped (exit 0)."""

  def __init__(self, signal_name: str, where: str):
    super().__init__(f"{signal_name}: stopped {where}")
    self.signal_name = signal_name


class StorageError(RuntimeError):
  """A file of the run could not be written: the disk or the quota is full, or the workdir
  became unwritable, read-only or vanished (exit code 4).

  ``str()`` is one line: the step (when known), the cause in words, the last complete
  checkpoint (when the file belongs to a run with checkpoints) and the remedy, which the entry
  point completes with the command that resumes. ``last_checkpoint`` may be updated while the
  error propagates: a save still running when it was raised may finish before the run stops.
  """

  EXIT_CODE = 4

  def __init__(
    self,
    cause: str,
    remedy: str,
    *,
    step: int | None = None,
    checkpoint_dir: str | None = None,
    last_checkpoint: int | None = None,
  ):
    super().__init__(cause)
    self.cause, self.remedy, self.step = cause, remedy, step
    self.checkpoint_dir, self.last_checkpoint = checkpoint_dir, last_checkpoint

  def __str__(self) -> str:
    parts = [self.cause if self.step is None else f"at step {self.step}: {self.cause}"]
    if self.checkpoint_dir is not None:
      which = "none" if self.last_checkpoint is None else f"step {self.last_checkpoint}"
      parts.append(f"last complete checkpoint: {which} in {self.checkpoint_dir}")
    parts.append(self.remedy)
    return "; ".join(parts)
