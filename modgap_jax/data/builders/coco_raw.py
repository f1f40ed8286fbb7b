"""TFDS builder ``coco_raw``: COCO 2017 captions read from the official files, no TensorFlow.

The root (``config.dataset.path``) holds what the official zips unpack to::

  annotations/captions_train2017.json   annotations/captions_val2017.json
  train2017/*.jpg                       val2017/*.jpg

Features per example:
  image: uint8 [h, w, 3], stored as JPEG with short side ``store_size`` (:mod:`files`).
  captions: every caption the annotations give the image (5 for most, up to 7), in
    annotation-id order.
  image_id: COCO's image id.

Splits:
  without Karpathy's file: 'train' (train2017, 118287 images) and 'val' (val2017, 5000);
  with ``dataset_coco.json`` (``config.dataset.karpathy_split``, or found in the root or in
  ``annotations/``): Karpathy's 'train' (82783), 'restval' (30504), 'val' (5000) and the
  standard 5k 'test'. Karpathy's file lists COCO 2014 images; the 2017 files hold the same
  images under the same ids, so each is found by its ``cocoid`` in either 2017 folder, and
  its captions are the 2017 annotations'. 'train+restval' is the usual training set.
Within a split, examples are in increasing image id. A run that names no evaluation split
takes Karpathy's 'test' when his file is found, else 'val' (:func:`default_eval_split`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from modgap_jax.data.builders import files
from modgap_jax.errors import ConfigError

NAME = "coco_raw"
SPLITS = ("train", "val", "test", "restval")
KARPATHY_FILE = "dataset_coco.json"
KARPATHY_SPLITS = ("train", "restval", "val", "test")
_FOLDERS = ("train2017", "val2017")


@dataclasses.dataclass(frozen=True)
class CocoImage:
  image_id: int
  path: str
  captions: tuple[str, ...]


def annotation_file(root: pathlib.Path, folder: str) -> pathlib.Path:
  return root / "annotations" / f"captions_{folder}.json"


def find_karpathy(root: pathlib.Path, karpathy_split: str) -> pathlib.Path | None:
  """The given file (ConfigError if absent), else ``dataset_coco.json`` in the root or annotations/, else None."""
  if karpathy_split:
    path = pathlib.Path(karpathy_split).expanduser().resolve()
    if not path.is_file():
      raise ConfigError(f"dataset.karpathy_split={str(path)!r} is not a file")
    return path
  for candidate in (root / KARPATHY_FILE, root / "annotations" / KARPATHY_FILE):
    if candidate.is_file():
      return candidate
  return None


def default_eval_split(options: files.FileOptions) -> tuple[str, str]:
  """The split a coco_raw run evaluates on when none is named, and one line saying why.

  Karpathy's 'test' (the paper's 5k test images) when his file is found (see
  :func:`find_karpathy`), else 'val' (val2017), the one held-out split the 2017 files give.
  Raises ConfigError for a bad ``path`` or a named Karpathy file that is missing.
  """
  root = pathlib.Path(files.check_options(NAME, options).path)
  karpathy = find_karpathy(root, options.karpathy_split)
  if karpathy is not None:
    return "test", f"coco_raw: evaluating on Karpathy's 'test' split ({karpathy})"
  return "val", (
    f"coco_raw: evaluating on 'val' (val2017): no {KARPATHY_FILE} in {root} or its annotations/, "
    "which Karpathy's 'test' split needs"
  )


def _read_json(path: pathlib.Path, what: str):
  if not path.is_file():
    raise ConfigError(f"{what} file={str(path)!r} is missing")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f"{what} file={str(path)!r} is not valid JSON: {e}") from None


def read_annotations(root: pathlib.Path, folder: str) -> list[CocoImage]:
  """The images of ``captions_<folder>.json`` that have captions, by increasing id.

  Raises ConfigError naming the file when it is missing or lacks 'images'/'annotations',
  or an annotation lacks 'image_id'/'caption'.
  """
  path = annotation_file(root, folder)
  table = _read_json(path, "COCO annotations")
  try:
    names = {int(im["id"]): im["file_name"] for im in table["images"]}
    captions: dict[int, list[tuple[int, str]]] = {}
    for k, ann in enumerate(table["annotations"]):
      captions.setdefault(int(ann["image_id"]), []).append(
        (int(ann.get("id", k)), " ".join(str(ann["caption"]).split()))
      )
  except (KeyError, TypeError, ValueError) as e:
    raise ConfigError(
      f"COCO annotations file={str(path)!r} lacks field {e} (expected 'images' with 'id' and "
      f"'file_name', 'annotations' with 'image_id' and 'caption')"
    ) from None
  unknown = sorted(set(captions) - set(names))
  if unknown:
    raise ConfigError(
      f"COCO annotations file={str(path)!r}: captions of image_id={unknown[0]} whose image is not listed"
    )
  return [
    CocoImage(i, os.path.join(root, folder, names[i]), tuple(t for _, t in sorted(captions[i])))
    for i in sorted(captions)
  ]


def read_karpathy(path: pathlib.Path) -> dict[int, str]:
  """Karpathy's file -> {cocoid: split}; ConfigError naming the file for a bad entry."""
  table = _read_json(path, "Karpathy split")
  try:
    result = {int(im["cocoid"]): str(im["split"]) for im in table["images"]}
  except (KeyError, TypeError, ValueError) as e:
    raise ConfigError(
      f"Karpathy split file={str(path)!r} lacks field {e} (expected 'images' with 'cocoid' and 'split')"
    ) from None
  bad = sorted({s for s in result.values() if s not in KARPATHY_SPLITS})
  if bad:
    raise ConfigError(f"Karpathy split file={str(path)!r} has split={bad[0]!r}; expected one of {KARPATHY_SPLITS}")
  return result


def read_splits(root: pathlib.Path, karpathy: pathlib.Path | None) -> dict[str, list[CocoImage]]:
  """{split: images}; see the module doc. Checks that every image file exists."""
  by_folder = {folder: read_annotations(root, folder) for folder in _FOLDERS}
  if karpathy is None:
    result = {"train": by_folder["train2017"], "val": by_folder["val2017"]}
  else:
    by_id = {im.image_id: im for images in by_folder.values() for im in images}
    result = {name: [] for name in KARPATHY_SPLITS}
    for image_id, split in sorted(read_karpathy(karpathy).items()):
      if image_id not in by_id:
        raise ConfigError(
          f"Karpathy split file={str(karpathy)!r} lists cocoid={image_id}, which neither "
          f"{annotation_file(root, 'train2017')} nor captions_val2017.json has"
        )
      result[split].append(by_id[image_id])
    result = {name: images for name, images in result.items() if images}
  files.check_files_exist((im.path for images in result.values() for im in images), str(root / "annotations"))
  return result


class CocoRaw(files.FileBuilder):
  """COCO 2017 captions from the official annotation files and image folders."""

  PATH_HINT = "the COCO root"

  @classmethod
  def make_config(cls, options: files.FileOptions) -> files.FilesConfig:
    """Checks ``options`` and names the build after them (see :mod:`files`)."""
    options = files.check_options(NAME, options)
    root = pathlib.Path(options.path)
    karpathy = find_karpathy(root, options.karpathy_split)
    options = dataclasses.replace(
      options, karpathy_split=str(karpathy or ""), test_fraction=files.DEFAULT_TEST_FRACTION, split_seed=0
    )  # Unused here.
    stamps = [files.file_stamp(annotation_file(root, f)) for f in _FOLDERS] + [files.file_stamp(karpathy)]
    return files.FilesConfig(
      name=files.config_name(options.path, [options.store_size, options.karpathy_split, *stamps]),
      version=cls.VERSION,
      description=f"COCO root {options.path}",
      options=options,
    )

  def _info(self) -> tfds.core.DatasetInfo:
    return self._make_info(
      features={
        "image": files.image_feature(),
        "captions": files.caption_feature(),
        "image_id": tfds.features.Scalar(dtype=np.int64),
      },
      description=(
        "COCO 2017 images with their captions, read from the official annotation files; "
        "Karpathy's train/restval/val/test splits when dataset_coco.json is given."
      ),
      citation=(
        "T.-Y. Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014; "
        "A. Karpathy and L. Fei-Fei, Deep Visual-Semantic Alignments for Generating Image "
        "Descriptions, CVPR 2015."
      ),
      homepage="https://cocodataset.org",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything comes from the local root.
    options = self.builder_config.options
    karpathy = pathlib.Path(options.karpathy_split) if options.karpathy_split else None
    by_split = read_splits(pathlib.Path(options.path), karpathy)
    return {name: self._generate_examples(images) for name, images in by_split.items()}

  def _generate_examples(self, images):
    encoded = files.prepare_images(
      [im.path for im in images], self.builder_config.options.store_size, upright=False, num_threads=self._num_threads
    )
    for image, jpeg in zip(images, encoded):
      yield image.image_id, {"image": jpeg, "captions": list(image.captions), "image_id": image.image_id}
