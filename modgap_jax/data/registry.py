"""The catalog: dataset names, their splits and label keys, and ``load``: name -> data source.

``load`` builds a local dataset on first use (offline; a few seconds for twemoji) into
the cache directory of :mod:`paths` and returns ``tfds.data_source``-style random access.
Importing this module imports :mod:`modgap_jax.data.builders`, which registers the builders
with TFDS.
"""

from __future__ import annotations

import os
import re

import tensorflow_datasets as tfds

from modgap_jax.data import paths
from modgap_jax.data.builders import coco
from modgap_jax.data.builders import digits
from modgap_jax.data.builders import fashion_mnist
from modgap_jax.data.builders import twemoji
from modgap_jax.errors import ConfigError
from modgap_jax.errors import check_choice

# Builders defined here, registered with TFDS when this module is imported.
BUILDERS = {
    "twemoji_captions": twemoji.TwemojiCaptions,
    "digits_captions": digits.DigitsCaptions,
    "mnist5k_captions": digits.Mnist5kCaptions,
    "fashion_mnist_local": fashion_mnist.FashionMnistLocal,
}
DATASETS = tuple(BUILDERS) + (coco.NAME,)

SPLITS = {name: ("train", "test") for name in BUILDERS}
SPLITS[coco.NAME] = coco.SPLITS

# The integer labels each dataset carries, for zero-shot and linear-probe evaluation.
LABEL_KEYS = {
    "twemoji_captions": ("subcategory", "category"),
    "digits_captions": ("label",),
    "mnist5k_captions": ("label",),
    "fashion_mnist_local": ("label",),
    coco.NAME: (),
}


def label_keys(name: str) -> tuple[str, ...]:
  """The label features of dataset ``name`` (empty for coco_captions)."""
  return LABEL_KEYS[check_choice("dataset", name, DATASETS)]


def check_split(name: str, split: str) -> str:
  """Accepts a split name, optionally with TFDS slicing ('train[:10%]') or '+' unions."""
  for part in str(split).split("+"):
    base = re.sub(r"\[.*\]$", "", part.strip())
    check_choice(f"split (of {name})", base, SPLITS[name])
  return split


def builder(name: str, data_dir: str | os.PathLike | None = None, *,
            source_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
  """Returns the (possibly unprepared) builder of a local dataset.

  Args:
    name: one of the local datasets (``BUILDERS``).
    data_dir: the cache directory; see :func:`paths.resolve_data_dir`.
    source_dir: fashion_mnist_local only: the directory with the four IDX .gz files.
  """
  check_choice("dataset", name, tuple(BUILDERS))
  kwargs = {"data_dir": os.fspath(paths.resolve_data_dir(data_dir))}
  if name == "fashion_mnist_local":
    kwargs["source_dir"] = source_dir
  elif source_dir is not None:
    raise ConfigError(f"source_dir is only used by dataset='fashion_mnist_local', not {name!r}")
  return BUILDERS[name](**kwargs)


def prepare(name: str, data_dir: str | os.PathLike | None = None, *,
            source_dir: str | os.PathLike | None = None) -> tfds.core.DatasetBuilder:
  """Builds dataset ``name`` into ``data_dir`` unless it is there already; returns the builder."""
  dataset_builder = builder(name, data_dir, source_dir=source_dir)
  if not dataset_builder.is_prepared():
    if name == "fashion_mnist_local":
      # Checked here too, so that the error is ours and not wrapped by TFDS.
      fashion_mnist.check_source_dir(dataset_builder._source_dir)  # pylint: disable=protected-access
    dataset_builder.download_and_prepare()
  return dataset_builder


def load(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
         source_dir: str | os.PathLike | None = None):
  """Returns a random-access data source for ``name``/``split``, building it if needed.

  Args:
    name: one of ``DATASETS``.
    split: one of the dataset's ``SPLITS`` (TFDS slicing such as 'train[:10%]' works).
    data_dir: cache directory; default ``$TFDS_DATA_DIR`` or ``~/.cache/modgap_jax/tensorflow_datasets``.
    source_dir: fashion_mnist_local only; see :func:`builder`.

  Returns:
    A ``tfds`` data source: ``len(source)``, ``source[i]`` and ``source.__getitems__(ids)``
    give dicts of NumPy values (see each builder's docstring for the features).
  """
  check_choice("dataset", name, DATASETS)
  check_split(name, split)
  if name == coco.NAME:
    if source_dir is not None:
      raise ConfigError("source_dir is only used by dataset='fashion_mnist_local', not 'coco_captions'")
    return coco.load(split, paths.resolve_data_dir(data_dir))
  return prepare(name, data_dir, source_dir=source_dir).as_data_source(split=split)
