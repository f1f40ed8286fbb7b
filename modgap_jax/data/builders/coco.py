"""Reading TFDS's catalog ``coco_captions`` (COCO 2014, Karpathy splits, 5 captions/image).

That builder needs TensorFlow even to be constructed, and downloads about 20 GB, so it is
never built here: the user prepares it once, in array_record format (the only format
that gives random access without TensorFlow's tf.data), and we read it. Its splits are
'train', 'val', 'test' and 'restval'.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from modgap_jax.errors import ConfigError

NAME = "coco_captions"
SPLITS = ("train", "val", "test", "restval")


def how_to_prepare(data_dir: pathlib.Path) -> str:
  return (
    f"`pip install tensorflow` then `tfds build coco_captions --data_dir={data_dir} "
    f"--file_format=array_record` (COCO 2014 archives may be put in {data_dir}/downloads/manual), "
    f"or pass data_dir= pointing at an existing array_record build"
  )


def tensorflow_available() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def load(split: str, data_dir: pathlib.Path):
  """Returns the data source of a prepared coco_captions split; ConfigError with the fix if absent."""
  if not tensorflow_available():
    raise ConfigError("dataset='coco_captions' needs TensorFlow and a prepared TFDS build: " + how_to_prepare(data_dir))
  builder = tfds.builder(NAME, data_dir=os.fspath(data_dir))
  if not builder.is_prepared():
    raise ConfigError(
      f"dataset='coco_captions' is not prepared in data_dir={str(data_dir)!r}: " + how_to_prepare(data_dir)
    )
  if "array_record" not in {str(getattr(f, "value", f)) for f in builder.info.available_file_formats()}:
    raise ConfigError(
      f"dataset='coco_captions' in data_dir={str(data_dir)!r} has no array_record files; run "
      f"`tfds convert_format --dataset_dir={data_dir}/{NAME} --out_file_format=array_record`"
    )
  return builder.as_data_source(split=split)


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def caption_texts(captions: Any) -> list[str]:
  """Extracts the caption strings from coco_captions' ``captions`` feature.

  The feature is ``Sequence({'text': str, 'id': int64})``. Decoded by NumPy it is a dict
  of arrays (``{'text': [b'...', ...], 'id': [...]}``); a generator-side example is a
  list of dicts. Both are accepted.
  """
  if isinstance(captions, Mapping):
    texts = captions["text"]
  else:
    texts = [c["text"] for c in captions]
  return [_text(t) for t in np.asarray(texts, dtype=object).reshape(-1)]


def to_record(example: Mapping[str, Any]) -> tuple[np.ndarray, list[str], dict[str, int]]:
  """Adapts one coco_captions example to (uint8 RGB image [h, w, 3], captions, labels={})."""
  image = np.asarray(example["image"], dtype=np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image, caption_texts(example["captions"]), {}
