"""A study's cells: their training configs (resolved once), commands and directories.

Cell ``c`` of a study trains ``<base_config>:<c>`` with ``base_overrides`` applied, seed k in
``<workdir>/<c>/seed<k>/``. :func:`resolve_cells` executes the base config file once and
calls its ``get_config`` once per cell; every seed's config is a copy with its seed set.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from modgap_jax.errors import ConfigError, check_choice
from modgap_jax.study.paper import STUDIES


def load_get_config(path: str) -> Callable[[str], ml_collections.ConfigDict]:
  """The ``get_config`` of a config file, as ``--config path:arg`` would load it."""
  if not os.path.isfile(path):
    raise ConfigError(f"study base_config={path!r}: no such file")
  spec = importlib.util.spec_from_file_location("_study_base_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config


def flatten_overrides(overrides: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
  """``{'dataset': {'name': 'x'}, 'optimizer.eps': 1e-3}`` → ``{'dataset.name': 'x', 'optimizer.eps': 1e-3}``.

  Nested mappings and dotted keys may be mixed; the result maps dotted field paths to leaves.
  """
  if overrides is None:
    return {}
  if isinstance(overrides, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    overrides = overrides.to_dict()
  if not isinstance(overrides, Mapping):
    raise ConfigError(f"base_overrides={overrides!r} must be a dict of dotted field → value")
  flat = {}
  for key, value in overrides.items():
    path = f"{prefix}{key}"
    if isinstance(value, (Mapping, ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
      flat.update(flatten_overrides(value, prefix=f"{path}."))
    else:
      flat[path] = value
  return flat


def nest_overrides(flat: Mapping[str, Any]) -> dict[str, Any]:
  """``{'dataset.name': 'x', 'num_steps': 6}`` → ``{'dataset': {'name': 'x'}, 'num_steps': 6}``.

  A ConfigDict field cannot hold dotted keys, so ``config.base_overrides`` takes them nested.
  """
  nested: dict[str, Any] = {}
  for dotted, value in flatten_overrides(flat).items():
    *path, leaf = dotted.split(".")
    node = nested
    for name in path:
      node = node.setdefault(name, {})
    node[leaf] = value
  return nested


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
  """Sets each dotted field of ``overrides`` in ``config``; an unknown field is a ConfigError."""
  for dotted, value in flatten_overrides(overrides).items():
    *path, leaf = dotted.split(".")
    node = config
    for name in path:
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        raise ConfigError(f"base_overrides: no such config field {dotted!r}")
      node = node[name]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ConfigError(f"base_overrides: no such config field {dotted!r}")
    try:
      node[leaf] = value
    except TypeError as e:
      raise ConfigError(f"base_overrides: {dotted}={value!r} has the wrong type ({e})".splitlines()[0]) from None


def study_cells(study: ml_collections.ConfigDict) -> list[str]:
  """The study's cell names: ``config.cells``, or the study's own (``STUDIES``) when empty."""
  name = check_choice("study", study.study, tuple(STUDIES))
  return list(study.cells) or list(STUDIES[name])


def cell_dirname(cell: str) -> str:
  """A readable, filesystem-safe directory name: ``flt=0.04`` stays, ``tr=exp_scaled:4`` → ``tr=exp_scaled_4``."""
  return re.sub(r"[^A-Za-z0-9._=+-]", "_", cell)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One cell: its name and its training config at seed 0 (base config, cell, overrides).

  ``seed_overridden``: the base overrides set ``seed`` themselves; as on the command line
  (:func:`command`), where their flag comes after ``--config.seed``, theirs then wins.
  """

  name: str
  config: ml_collections.ConfigDict
  seed_overridden: bool = False

  @property
  def dirname(self) -> str:
    return cell_dirname(self.name)

  def seed_config(self, seed: int) -> ml_collections.ConfigDict:
    """The training config of seed ``seed``: a copy of the cell's with ``seed`` set."""
    config = self.config.copy_and_resolve_references()
    if not self.seed_overridden:
      config.seed = int(seed)
    return config

  def run_dir(self, workdir: str, seed: int) -> str:
    return os.path.join(workdir, self.dirname, f"seed{seed}")


def resolve_cells(study: ml_collections.ConfigDict) -> list[Cell]:
  """Every cell of the study with its config, the base config file executed once."""
  names = study_cells(study)
  get_config = load_get_config(study.base_config)
  seed_overridden = "seed" in flatten_overrides(study.base_overrides)
  cells = []
  for name in names:
    config = get_config(name)
    config.seed = 0
    apply_overrides(config, study.base_overrides)
    cells.append(Cell(name, config, seed_overridden))
  return cells


def flag_value(value: Any) -> str:
  """``value`` as config_flags reads it back from ``--config.<field>=<text>``."""
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(flag_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value)  # numbers and bools; repr keeps every digit of a float


def command(study: ml_collections.ConfigDict, cell: str) -> str:
  """The command line that trains one seed of ``cell`` exactly as the study does.

  ``{seed}`` and ``{workdir}`` are placeholders (``str.format``); each base override becomes
  one ``--config.<field>=<value>`` flag. The study's own progress-bar setting is left out:
  it changes nothing a run computes.
  """
  flags = [
    shlex.quote(f"--config.{field}={flag_value(value)}")
    for field, value in sorted(flatten_overrides(study.base_overrides).items())
  ]
  return " ".join(
    [
      "python -m experiments.main",
      shlex.quote(f"--config={study.base_config}:{cell}"),
      "--config.seed={seed}",
      *flags,
      "--workdir {workdir}",
    ]
  )
