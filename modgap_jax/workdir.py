"""A run's workdir: one process at a time, and one run's identity.

``config.json`` in a workdir says which run its checkpoints and metrics belong to. A restart
may change how the run is watched (progress bar, log, eval and checkpoint cadence, where the
data lives) but nothing that changes what it computes: :func:`check_same_run` refuses the
rest before anything is written. The learning rate follows warm-up + cosine to 0 over the
run's total steps, so ``num_steps`` and ``num_epochs`` are part of the identity too:
extending a run would change the rate of every step already taken.

:class:`WorkdirLock` is an advisory ``flock`` on ``<workdir>/.lock``. The kernel drops it when
the holder exits, however it exits, so a killed run never blocks the next start.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from modgap_jax import run_io
from modgap_jax.data.scenes import config as scenes_config
from modgap_jax.errors import ConfigError

# Fields a resumed run may change: they decide what is logged, evaluated, kept or shown, and
# where the data is read from, never the training itself.
RESUMABLE_CHANGES = (
  "progress_bar",
  "tensorboard",
  "log_every",
  "eval_every",
  "checkpoint_every",
  "keep_checkpoints",
  "dataset.data_dir",
  "dataset.num_workers",
  "eval.batch_size",
)

# Fields added to the config after runs existed, with the value that does what the code did
# before them: a run started earlier resumes under the new code when they hold that value.
ADDED_FIELDS = {
  "nonfinite": "stop",
  "tensorboard": True,
  "init_from": "",
  "pretrained_config": "",
  "dataset": {
    "vocab_file": "",
    "num_workers": -1,
    "path": "",
    "store_size": 256,
    "karpathy_split": "",
    "test_fraction": 0.1,
    "split_seed": 0,
    "crop_scale": (),
    "crop_ratio": (3 / 4, 4 / 3),
    "scenes": scenes_config.DEFAULTS,
  },
}

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}, with values as JSON would store them (tuples -> lists)."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + "."))
    else:
      flat[name] = run_io.to_jsonable(value)
  return flat


def config_changes(
  old: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> list[tuple[str, Any, Any]]:
  """(field, old, new) for every field that differs and may not, in field order.

  A field the old config lacks but the new one sets to its value in ``defaults`` is no
  change: it was added to the project since the run started, and that value keeps the old
  behaviour (:data:`ADDED_FIELDS`).
  """
  old_flat, new_flat = flatten(old), flatten(new)
  default_flat = flatten(defaults or {})
  missing = object()
  changes = []
  for field in sorted(set(old_flat) | set(new_flat)):
    before, after = old_flat.get(field, missing), new_flat.get(field, missing)
    if before is missing and field in default_flat and after == default_flat[field]:
      continue
    if before != after and field not in RESUMABLE_CHANGES:
      changes.append((field, "(absent)" if before is missing else before, "(absent)" if after is missing else after))
  return changes


def read_config(workdir: str) -> dict[str, Any] | None:
  """The config ``workdir``'s ``config.json`` holds, as stored; None when it holds none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ConfigError(
      f"--workdir={workdir}: its {CONFIG_FILE} is unreadable ({type(e).__name__}); "
      "move the workdir away or choose another"
    ) from None


def check_same_run(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises a one-line ConfigError if ``workdir`` holds a run with a different identity."""
  old = read_config(workdir)
  if old is None:
    return
  changes = config_changes(old, config.to_dict(), ADDED_FIELDS)
  if changes:
    listed = ", ".join(f"{field}: {before!r} -> {after!r}" for field, before, after in changes)
    raise ConfigError(
      f"--workdir={workdir} holds a run with a different config ({listed}); use a new --workdir, "
      f"or change only {', '.join(RESUMABLE_CHANGES)}"
    )


class WorkdirLock:
  """Holds ``<workdir>/.lock`` for as long as the run lives (a context manager)."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def __enter__(self) -> "WorkdirLock":
    os.makedirs(self.workdir, exist_ok=True)
    file = open(self.path, "a+")
    try:
      fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      file.seek(0)
      holder = file.read().strip() or "unknown"
      file.close()
      raise ConfigError(
        f"--workdir={self.workdir} is in use by another process (pid {holder}); wait for it to "
        "finish or choose another --workdir"
      ) from None
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
    self._file = file
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
