"""Storage failures as one :class:`~modgap_jax.errors.StorageError`: a full disk or quota, a
permission change, a read-only or vanished workdir.

Every writer of a run (checkpoints, ``metrics.jsonl``, event files, reports, figures) turns
such a failure into a StorageError that names the step, the cause in words and the last
complete checkpoint, so the entry point can print one line instead of the traceback.

A failure reaches Python in two shapes:

- Python's own writes raise :class:`OSError` with an errno;
- orbax writes arrays through tensorstore, whose errors are :class:`ValueError` with an absl
  status code in front (``RESOURCE_EXHAUSTED: Error writing "..." ...``) and usually the
  errno as ``[os_error_code='28']``.

Anything else (a bug, a bad value) is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator

from modgap_jax.errors import StorageError

# errno -> (cause, remedy). ``{where}`` is the directory written into, ``{path}`` the file or
# directory the system refused.
CAUSES = {
  errno.ENOSPC: ("no space left on {where}", "free space"),
  errno.EDQUOT: ("disk quota exceeded on {where}", "free space or raise the quota"),
  errno.EFBIG: ("file too large for the file system of {where}", "move the workdir to another file system"),
  errno.EACCES: ("permission denied on {path}", "restore write permission"),
  errno.EPERM: ("operation not permitted on {path}", "restore write permission"),
  errno.EROFS: ("read-only file system at {where}", "make it writable"),
  errno.ENOENT: ("{path} no longer exists", "restore the workdir"),
  errno.EIO: ("input/output error on {where}", "check the disk"),
}

# absl status codes of tensorstore errors that carry no errno.
STATUS_ERRNO = {
  "RESOURCE_EXHAUSTED": errno.ENOSPC,
  "PERMISSION_DENIED": errno.EACCES,
  "NOT_FOUND": errno.ENOENT,
}

_OS_ERROR_CODE = re.compile(r"os_error_code='(\d+)'")
_FAILED_PATH = re.compile(r'(?:Failed writing|Error writing local file|local file): "([^"]+)"')


def storage_errno(error: BaseException) -> int | None:
  """The errno of the storage failure behind ``error`` (or the errors it was raised from);
  None if it is not one."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in CAUSES:
      return error.errno
    if isinstance(error, ValueError):
      text = str(error)
      code = _OS_ERROR_CODE.search(text)
      if code and int(code.group(1)) in CAUSES:
        return int(code.group(1))
      status = STATUS_ERRNO.get(text.split(":", 1)[0].strip())
      if status is not None:
        return status
    error = error.__cause__ or error.__context__
  return None


def _refused_path(error: BaseException, where: str, number: int) -> str:
  """The path the system refused: the file named by the OSError or by tensorstore, or its
  directory if the file was still to be created; for a vanished path, the top of what
  vanished. ``where`` if the error names no path."""
  path = getattr(error, "filename", None)
  if path is None:
    match = _FAILED_PATH.search(str(error))
    path = match.group(1) if match else None
  if path is None:
    return where
  path = os.path.abspath(os.fspath(path))
  if number == errno.ENOENT:
    while os.path.dirname(path) != path and not os.path.lexists(os.path.dirname(path)):
      path = os.path.dirname(path)
    return path
  return path if os.path.lexists(path) else os.path.dirname(path)


def failure(
  error: BaseException,
  where: str,
  *,
  step: int | None = None,
  checkpoint_dir: str | None = None,
  last_checkpoint: int | None = None,
) -> StorageError | None:
  """The StorageError for ``error`` raised while writing into directory ``where``; None if
  ``error`` is no storage failure."""
  number = storage_errno(error)
  if number is None:
    return None
  cause, remedy = CAUSES[number]
  where = os.path.abspath(where)
  cause = cause.format(where=where, path=_refused_path(error, where, number))
  return StorageError(cause, remedy, step=step, checkpoint_dir=checkpoint_dir, last_checkpoint=last_checkpoint)


@contextlib.contextmanager
def writing(path: str, *, step: int | None = None) -> Iterator[None]:
  """Raises a StorageError, from the original, if writing ``path`` (a file in a run's
  workdir) fails for storage reasons; other errors pass through unchanged.

  The error names the run's last complete checkpoint when the file's directory holds one's
  checkpoints (``<workdir>/checkpoints``).
  """
  try:
    yield
  except (OSError, ValueError) as e:
    where = os.path.dirname(os.path.abspath(path))
    if storage_errno(e) is None:
      raise
    checkpoint_dir, last = run_checkpoints(where)
    raise failure(e, where, step=step, checkpoint_dir=checkpoint_dir, last_checkpoint=last) from e


def run_checkpoints(workdir: str) -> tuple[str | None, int | None]:
  """(checkpoint directory, newest complete step or None) of the run in ``workdir``;
  (None, None) if it has no checkpoint directory or it cannot be listed."""
  from modgap_jax import checkpoint  # orbax is imported only here: figures alone do not need it

  directory = checkpoint.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return None, None
  try:
    steps = checkpoint.complete_steps(directory)
  except OSError:
    return None, None
  return directory, max(steps, default=None)
