"""A shared base for the labelled grayscale builders (digits, MNIST-5k, Fashion-MNIST).

Features per example:
  image: uint8 [h, w, 1] grayscale at native size (the pipeline makes it RGB).
  captions: variable-length list of strings from :mod:`class_captions` templates.
  label: ClassLabel.
"""

from __future__ import annotations

import abc

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from modgap_jax.data.builders import base


class LabelledImageBuilder(base.OfflineBuilder, skip_registration=True):
  """Subclasses give the image shape, class names and per-split arrays."""

  IMAGE_SHAPE: tuple[int, int, int]
  CLASS_NAMES: tuple[str, ...]
  DESCRIPTION: str = ""
  CITATION: str = ""
  HOMEPAGE: str = ""

  @abc.abstractmethod
  def _load_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray, list[list[str]]]]:
    """Returns {split: (uint8 images [n, h, w, 1], int labels [n], captions)}."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self._make_info(
      features={
        # zlib: uint8 stored as bytes, not as an int64 list (about 10x faster to write).
        "image": tfds.features.Tensor(shape=self.IMAGE_SHAPE, dtype=np.uint8, encoding="zlib"),
        "captions": tfds.features.Sequence(tfds.features.Text()),
        "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
      },
      description=self.DESCRIPTION,
      citation=self.CITATION,
      homepage=self.HOMEPAGE,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything comes from installed packages or local files.
    return {name: self._generate_examples(arrays, name) for name, arrays in self._load_arrays().items()}

  def _generate_examples(self, arrays, split_name):
    images, labels, captions = arrays
    for i in tqdm.tqdm(range(len(images)), desc=f"{self.name}/{split_name}", leave=False):
      yield i, {"image": images[i], "captions": captions[i], "label": int(labels[i])}
