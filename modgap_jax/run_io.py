"""What a run writes into its workdir, written so that a killed run never leaves a torn file.

Whole files (config, report, figures, arrays) go to a temporary name in the same directory and
are renamed into place. ``metrics.jsonl`` is appended line by line and flushed; on resume it
is cut back to the restored checkpoint's step, so the log of a resumed run reads as if the run
had never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside ``path``; renames it onto ``path`` if the block succeeds."""
  directory = os.path.dirname(os.path.abspath(path)) or "."
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=directory)
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json(path: str, obj: Any) -> None:
  write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def to_jsonable(obj: Any) -> Any:
  """Converts numpy/jax scalars and arrays to plain Python; NaN and inf become null."""
  if isinstance(obj, Mapping):
    return {str(k): to_jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [to_jsonable(v) for v in obj]
  if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
    return to_jsonable(np.asarray(obj).tolist())
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


class MetricsLog:
  """``metrics.jsonl``: one JSON object per line, each with ``step`` and ``split``."""

  def __init__(self, path: str, *, resume_step: int | None):
    self.path = path
    self._truncate_after(resume_step or 0)
    self._file = open(path, "a")

  def _truncate_after(self, step: int) -> None:
    """Keeps only lines with ``step`` <= ``step`` (and drops a torn last line)."""
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record.get("step", 0) <= step:
          kept.append(json.dumps(record))
    write_text(self.path, "".join(line + "\n" for line in kept))

  def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
    record = {"step": int(step), "split": split, **to_jsonable(dict(values))}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class NullLog:
  """A :class:`MetricsLog` that writes nothing (processes other than 0 of a multi-host run)."""

  def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
    pass

  def close(self) -> None:
    pass


def read_metrics(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
