"""Orbax checkpoints of the train state under ``workdir/checkpoints``.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact; resuming picks the latest complete one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every ``every`` steps (and when asked), keeps the newest ``keep``, restores the latest."""

  def __init__(self, workdir: str, *, every: int, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.every = max(int(every), 1)
    options = ocp.CheckpointManagerOptions(max_to_keep=max(int(keep), 1), create=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, template: Any) -> Any | None:
    """The latest saved state shaped like ``template`` (host arrays), or None if there is none."""
    step = self.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def is_due(self, step: int) -> bool:
    """Whether ``step`` falls on the save interval and is not saved yet."""
    return step % self.every == 0 and step not in self._manager.all_steps()

  def save(self, step: int, state: Any) -> None:
    """Saves ``state`` (host arrays) at ``step``, unless that step is already saved."""
    if step not in self._manager.all_steps():
      self._manager.save(step, args=ocp.args.StandardSave(state))

  def close(self) -> None:
    """Blocks until pending saves are on disk."""
    self._manager.wait_until_finished()
    self._manager.close()
