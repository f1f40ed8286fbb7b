"""SIGTERM and SIGINT as requests to stop at the next step boundary.

A preempting scheduler sends SIGTERM and waits a grace period before SIGKILL. Dying at once
loses up to ``checkpoint_every`` steps; instead the handler only records the signal, and the
training loop, between dispatches, saves a checkpoint and raises
:class:`modgap_jax.errors.Preempted`. A second SIGINT (Ctrl-C twice) interrupts at once.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
  """Context manager: while active, ``requested`` names the first stop signal received."""

  def __init__(self):
    self.requested: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.requested is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # asked twice: stop now, as Ctrl-C normally would
    self.requested = signal.Signals(signum).name

  def __enter__(self) -> "StopRequests":
    # Python delivers signals to the main thread only; elsewhere (a test runner's worker
    # thread) the process keeps its default handling.
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
