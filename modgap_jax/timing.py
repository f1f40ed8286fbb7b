"""Wall time per phase of a run (dataset, compilation, training, evaluation, ...)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

# The order in which reports list the phases; any other phase follows in first-use order.
PHASES = ("dataset", "setup", "compile", "train", "eval", "checkpoint", "outputs")


class PhaseClock:
  """Adds up wall seconds per named phase: ``with clock("train"): ...``."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self._started = time.perf_counter()

  @contextlib.contextmanager
  def __call__(self, phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

  def move(self, source: str, target: str, seconds: float) -> None:
    """Re-files ``seconds`` measured inside ``source`` as ``target`` (e.g. compilation in a step)."""
    seconds = min(seconds, self.seconds.get(source, 0.0))
    self.seconds[source] = self.seconds.get(source, 0.0) - seconds
    self.seconds[target] = self.seconds.get(target, 0.0) + seconds

  def total(self) -> float:
    """Seconds since the clock was made."""
    return time.perf_counter() - self._started

  def rows(self) -> list[tuple[str, float]]:
    """(phase, seconds) in report order, then 'other' for time outside every phase."""
    ordered = [p for p in PHASES if p in self.seconds] + [p for p in self.seconds if p not in PHASES]
    rows = [(p, self.seconds[p]) for p in ordered]
    rows.append(("other", max(self.total() - sum(self.seconds.values()), 0.0)))
    return rows
