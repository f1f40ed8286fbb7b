"""TFDS builder ``fashion_mnist_local``: Fashion-MNIST from local IDX files.

The Debian package ``dataset-fashion-mnist`` installs the four gzipped IDX files under
``/usr/share/datasets/fashion-mnist``. Another directory holding the same four files can
be given as ``source_dir`` (a builder kwarg) or through ``MODGAP_FASHION_MNIST_DIR``.
Splits: 'train' (60000) and 'test' (10000), images uint8 [28, 28, 1].
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from modgap_jax.data.builders import class_captions, idx, labelled
from modgap_jax.errors import ConfigError

DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
SOURCE_DIR_ENV = "MODGAP_FASHION_MNIST_DIR"

# split -> (images file, labels file), the names used by Zalando and by the Debian package.
FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def resolve_source_dir(source_dir: str | os.PathLike | None) -> pathlib.Path:
  """``source_dir``, else ``$MODGAP_FASHION_MNIST_DIR``, else the Debian package's directory."""
  return pathlib.Path(source_dir or os.environ.get(SOURCE_DIR_ENV) or DEFAULT_SOURCE_DIR)


def check_source_dir(source_dir: pathlib.Path) -> None:
  """Raises a one-line ConfigError naming the fix when any of the four files is missing."""
  missing = [name for pair in FILES.values() for name in pair if not (source_dir / name).is_file()]
  if missing:
    raise ConfigError(
      f"fashion_mnist_local source_dir={str(source_dir)!r} lacks {', '.join(missing)}; run "
      f"`apt-get install dataset-fashion-mnist` (installs {DEFAULT_SOURCE_DIR}) or set "
      f"{SOURCE_DIR_ENV} to a directory with the four IDX .gz files"
    )


def read_split(source_dir: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns uint8 images [n, 28, 28, 1] and int64 labels [n] of one split."""
  image_file, label_file = FILES[split]
  images = idx.read_idx(source_dir / image_file)
  labels = idx.read_idx(source_dir / label_file)
  if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
    raise ConfigError(
      f"fashion_mnist_local source_dir={str(source_dir)!r}: {image_file} {images.shape} "
      f"and {label_file} {labels.shape} are not uint8 [n, h, w] images with n labels"
    )
  if labels.size and not 0 <= labels.min() <= labels.max() < len(class_captions.FASHION_LABELS):
    raise ConfigError(f"fashion_mnist_local: {label_file} has labels outside 0..9")
  return images[..., None], labels.astype(np.int64)


class FashionMnistLocal(labelled.LabelledImageBuilder):
  """Fashion-MNIST read from local IDX files, with template captions; works offline."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  IMAGE_SHAPE = (28, 28, 1)
  CLASS_NAMES = class_captions.FASHION_LABELS
  DESCRIPTION = (
    "Fashion-MNIST (Zalando, MIT license) read from local IDX files, with three template captions per image."
  )
  CITATION = (
    "H. Xiao, K. Rasul and R. Vollgraf, Fashion-MNIST: a Novel Image Dataset for Benchmarking "
    "Machine Learning Algorithms, arXiv:1708.07747, 2017."
  )
  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"

  def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
    self._source_dir = resolve_source_dir(source_dir)
    super().__init__(**kwargs)

  def _load_arrays(self):
    check_source_dir(self._source_dir)
    result = {}
    for split in FILES:
      images, labels = read_split(self._source_dir, split)
      result[split] = (images, labels, class_captions.fashion_captions(labels, f"fashion_mnist_local/v1/{split}"))
    return result
