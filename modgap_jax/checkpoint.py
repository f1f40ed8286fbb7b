"""Orbax checkpoints of the train state under ``workdir/checkpoints``.

Orbax writes each step into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact; resuming picks the latest complete one.
A complete checkpoint that cannot be read (its files damaged afterwards) is reported in one
warning line and the next older one is tried; if none can be read the run stops rather than
start afresh over them.

A save that fails for storage reasons (a full disk or quota, a permission change, a read-only
or vanished workdir) raises :class:`~modgap_jax.errors.StorageError`, whether it fails at once
or in orbax's background thread (then at the next save or at :meth:`Checkpointer.close`). It
names the step of that save and the last complete checkpoint, read back from disk: a save cut
short stays in ``<step>.orbax-checkpoint-tmp``, which orbax never lists as a step. The earlier
checkpoints are untouched (orbax deletes the ones past ``keep`` only after a save completes).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import jax
import orbax.checkpoint as ocp

from modgap_jax import storage
from modgap_jax.errors import ConfigError, StorageError

CHECKPOINT_SUBDIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  """Where the run in ``workdir`` keeps its checkpoints."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_SUBDIR)


def complete_steps(directory: str) -> list[int]:
  """The steps with a complete checkpoint in ``directory``, as orbax's step names list them
  (what ``CheckpointManager.reload`` reads): a save in progress or cut short is not one."""
  return sorted(m.step for m in ocp.step.standard_name_format().find_all(directory))


class Checkpointer:
  """Saves every ``every`` steps (and when asked), keeps the newest ``keep``, restores the latest."""

  def __init__(self, workdir: str, *, every: int, keep: int):
    self.workdir = os.path.abspath(workdir)
    self.directory = checkpoint_dir(workdir)
    _quiet_orbax_failures()
    # Only the interval: orbax's default policy would also save the first step it sees.
    interval = ocp.checkpoint_managers.FixedIntervalPolicy(max(int(every), 1))
    # cleanup_tmp_directories: a save cut short (a full disk, a kill) leaves its tmp directory;
    # the next run removes it at start, which frees its space and spares orbax a warning later.
    # Step directories are made before save() returns: made in the background, a failure to
    # make one (a read-only workdir) left orbax's writer threads waiting 20 minutes for it,
    # and the process with them.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max(int(keep), 1),
      save_decision_policy=interval,
      create=True,
      cleanup_tmp_directories=True,
      async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
    )
    with self._storage_failures(step=None):
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._pending = None  # the step of a save orbax may still be writing in the background

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
    preemption), unless that step is already saved. The write goes on in the background;
    a StorageError of the previous save surfaces here."""
    if step in self._manager.all_steps():
      return
    self._wait()
    with self._storage_failures(step):
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._pending = step

  def close(self) -> None:
    """Blocks until pending saves are on disk; raises StorageError if one failed.

    Called while a StorageError of another writer is on its way out (a metrics line that
    failed while a save was running), it sets that error's last complete checkpoint to what
    is on disk once the save has ended.
    """
    in_flight = sys.exc_info()[1]
    try:
      self._wait()
    except BaseException:
      with contextlib.suppress(Exception):  # the save's own failure is the one to report
        self._manager.close()
      raise
    with self._storage_failures(step=None):
      self._manager.close()
    if isinstance(in_flight, StorageError) and in_flight.checkpoint_dir == self.directory:
      in_flight.last_checkpoint = storage.run_checkpoints(self.workdir)[1]

  def _wait(self) -> None:
    """Waits for the background save; its failure is reported at its own step."""
    step, self._pending = self._pending, None
    with self._storage_failures(step):
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _storage_failures(self, step: int | None) -> Iterator[None]:
    """Turns a storage failure of orbax (an OSError, or tensorstore's ValueError) into a
    StorageError at ``step``; other errors pass through."""
    try:
      yield
    except (OSError, ValueError) as e:
      if storage.storage_errno(e) is None:
        raise
      directory, last = storage.run_checkpoints(self.workdir)
      raise storage.failure(e, self.workdir, step=step, checkpoint_dir=directory, last_checkpoint=last) from e


class _FailedSaveLog(logging.Filter):
  """Drops the log records of a failed save: orbax's errors, and any record that carries a
  storage failure (asyncio's 'Future exception was never retrieved' for each array whose
  write was abandoned). Orbax logs the failure, with its traceback, in each of its threads it
  passes through, and asyncio once per array, hundreds of lines in all; the same failure
  also reaches the caller as an exception, which says it in one line."""

  ORBAX_DIR = os.path.dirname(os.path.abspath(ocp.__file__))

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR and os.path.abspath(record.pathname).startswith(self.ORBAX_DIR):
      return False
    error = record.exc_info[1] if record.exc_info else None
    return error is None or storage.storage_errno(error) is None


def _ignore_closed_loop(unraisable, previous=None) -> None:
  """``sys.unraisablehook`` that drops tensorstore's late callbacks after a failed save.

  When one array of a save fails, orbax's asyncio loop ends while tensorstore still holds
  callbacks for the other arrays; each then fails with 'Event loop is closed', which
  tensorstore reports as an unraisable error with no object (a traceback each, up to
  hundreds). Nothing waits on those results any more; every other report passes on.
  """
  exc = unraisable.exc_value
  if unraisable.object is None and isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return
  (previous or sys.__unraisablehook__)(unraisable)


def _quiet_orbax_failures() -> None:
  """Installs :class:`_FailedSaveLog` on the loggers of absl (orbax's) and asyncio, and
  :func:`_ignore_closed_loop`, once per process (the hook again if something, a test runner,
  has put back its own since)."""
  for name in ("absl", "asyncio"):
    logger = logging.getLogger(name)
    if not any(isinstance(f, _FailedSaveLog) for f in logger.filters):
      logger.addFilter(_FailedSaveLog())
  if not getattr(sys.unraisablehook, "_modgap_closed_loop", False):
    hook = functools.partial(_ignore_closed_loop, previous=sys.unraisablehook)
    hook._modgap_closed_loop = True
    sys.unraisablehook = hook
