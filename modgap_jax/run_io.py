"""What a run writes into its workdir, written so that a killed run never leaves a torn file.

Whole files (config, report, figures, arrays) go to a temporary name in the same directory and
are renamed into place. ``metrics.jsonl`` is appended line by line, unbuffered; on resume it
is cut back to the restored checkpoint's step, so the log of a resumed run reads as if the run
had never stopped.

A write that fails for storage reasons (a full disk, a permission change, ...) raises
:class:`~modgap_jax.errors.StorageError` naming the file's step when it has one (see
:mod:`modgap_jax.storage`). Appends are unbuffered, so a failed one leaves nothing pending
that closing the file would try, and fail, to write again.
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

from modgap_jax import storage


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside ``path``; renames it onto ``path`` if the block succeeds.

  A storage failure, of the block's writes or of the rename, raises StorageError.
  """
  with storage.writing(path):
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
      with contextlib.suppress(OSError):  # a partial file frees its space; unremovable, it stays hidden
        os.remove(tmp)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def save_figure(fig, path: str, **savefig_kwargs) -> None:
  """Writes a matplotlib figure to ``path`` atomically (``fig.savefig`` on a temporary name)
  and closes it, written or not."""
  import matplotlib.pyplot as plt  # only the figure writers need matplotlib

  try:
    with atomic_path(path) as tmp:
      fig.savefig(tmp, **savefig_kwargs)
  finally:
    plt.close(fig)


def append(file, data: bytes) -> None:
  """Writes all of ``data`` to an unbuffered binary file (one write may take only part)."""
  view = memoryview(data)
  while view:
    view = view[file.write(view) :]


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
    with storage.writing(path):
      self._file = open(path, "ab", buffering=0)

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
    """Appends one line; a torn one (the disk filled mid-line) is dropped on resume."""
    record = {"step": int(step), "split": split, **to_jsonable(dict(values))}
    with storage.writing(self.path, step=step):
      append(self._file, (json.dumps(record) + "\n").encode())

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
