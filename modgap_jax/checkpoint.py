"""Orbax checkpoints of the train state under ``workdir/checkpoints``.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact; resuming picks the latest complete one.
A complete checkpoint that cannot be read (its files damaged afterwards) is reported in one
warning line and the next older one is tried; if none can be read the run stops rather than
start afresh over them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from modgap_jax.errors import ConfigError


class Checkpointer:
  """Saves every ``every`` steps (and when asked), keeps the newest ``keep``, restores the latest."""

  def __init__(self, workdir: str, *, every: int, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    # Only the interval: orbax's default policy would also save the first step it sees.
    interval = ocp.checkpoint_managers.FixedIntervalPolicy(max(int(every), 1))
    options = ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), save_decision_policy=interval, create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, template: Any) -> Any | None:
    """The newest readable state shaped like ``template`` (host arrays); None if none was saved.

    Each unreadable checkpoint gets a warning line on stderr; once an older one restores, the
    unreadable ones are deleted so that the resumed run saves those steps afresh. Raises
    ConfigError (and deletes nothing) if checkpoints exist but none is readable.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    damaged = []
    for step in steps:
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # orbax surfaces damage as many exception types
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        print(
          f"warning: checkpoint {step} in {self.directory} is unreadable ({type(e).__name__}: {reason}); "
          "falling back to the one before",
          file=sys.stderr,
        )
        damaged.append(step)
        continue
      for bad in damaged:  # the resumed run will save these steps again
        self._manager.delete(bad)
      return state
    if steps:
      raise ConfigError(
        f"no readable checkpoint in {self.directory} (steps {', '.join(map(str, steps))}); "
        "move the workdir away to start afresh"
      )
    return None

  def is_due(self, step: int) -> bool:
    """Whether ``step`` falls on the save interval and is newer than every saved step (orbax's rule)."""
    return self._manager.should_save(step)

  def save(self, step: int, state: Any) -> None:
    """Saves ``state`` (host arrays) at ``step`` even off the interval (the last step, a
    preemption), unless that step is already saved."""
    if step not in self._manager.all_steps():
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def close(self) -> None:
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()
    self._manager.close()
