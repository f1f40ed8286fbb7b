"""Keeps third-party warnings that ask nothing of the user off the terminal; ``--verbose`` shows them.

A first run through ``experiments.main`` used to print, each more than once, lines such as

- absl's ``W... dataset_builder.py] Using custom data configuration: FilesConfig(...)`` with
  the whole options repr (TFDS, every time a file dataset's builder is made);
- ``OpenCV is not installed. We recommend using OpenCV ...`` (TFDS decodes with Pillow
  instead, which is what this project wants);
- ``Variant folder ... has no dataset_info.json`` (TFDS, before every first build).

None concerns something the user can act on. So the entry point hides warnings and lower
that come from ``QUIET_PACKAGES``, through absl/Python logging or through ``warnings``.
Errors from any library, every warning of JAX (a missing GPU plugin, say) and of every other
package, and this project's own progress bars and one-line messages (plain prints) stay.
``--verbose``, or any of absl's verbosity flags (``--verbosity``/``-v``), shows everything.

Library use (``import modgap_jax``) changes nothing: only :func:`configure` does, and only
the entry point calls it.
"""

from __future__ import annotations

import logging
import pathlib
import warnings
from collections.abc import Callable

from absl import logging as absl_logging

# Top-level packages whose warnings a user cannot act on.
QUIET_PACKAGES = ("tensorflow_datasets", "grain", "orbax", "etils", "array_record")


def from_quiet_package(pathname: str) -> bool:
  """Whether a source file lies inside one of ``QUIET_PACKAGES`` (a folder of that name on its path)."""
  return any(part in QUIET_PACKAGES for part in pathlib.PurePath(pathname).parts[:-1])


class ThirdPartyFilter(logging.Filter):
  """Drops log records below ERROR that a file of ``QUIET_PACKAGES`` emitted; passes the rest."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not from_quiet_package(record.pathname)


# Whether configure() hid the third-party lines in this process; grain's workers follow it.
_hiding = False


def hide_third_party() -> None:
  """Hides, in this process, warnings and lower from ``QUIET_PACKAGES`` (log records and ``warnings``)."""
  third_party = ThirdPartyFilter()
  # On absl's logger itself, which every absl.logging call goes through whatever the handlers
  # (a grain worker has none of absl.app's); and on the root's handlers for the other loggers.
  loggers_and_handlers = {absl_logging.get_absl_logger(), *logging.getLogger().handlers}
  for target in loggers_and_handlers:
    if not any(isinstance(f, ThirdPartyFilter) for f in target.filters):
      target.addFilter(third_party)
  modules = "|".join(QUIET_PACKAGES)
  warnings.filterwarnings("ignore", module=rf"({modules})(\..*)?$")


def configure(verbose: bool = False, absl_verbosity_given: bool = False) -> None:
  """Sets up the entry point's logging: WARNING and up, less the third-party lines above.

  Args:
    verbose: ``--verbose``: show every warning, hide nothing.
    absl_verbosity_given: the user gave absl's ``--verbosity`` (or ``-v``): keep that level
      and hide nothing, as with ``verbose``.
  """
  global _hiding
  if not absl_verbosity_given:
    absl_logging.set_verbosity(absl_logging.WARNING)
  if verbose or absl_verbosity_given:
    return
  hide_third_party()
  _hiding = True


def worker_init_fn() -> Callable[[int, int], None] | None:
  """For grain's ``mp_prefetch``: workers hide what this process hides (None when it hides nothing)."""
  return _init_worker if _hiding else None


def _init_worker(worker_index: int, worker_count: int) -> None:
  del worker_index, worker_count  # every worker is set up alike
  hide_third_party()
