"""TFDS builder ``image_text_folder``: any folder of images with a ``captions.jsonl``.

Each line of ``<path>/captions.jsonl`` is a JSON object::

  {"image": "cats/001.jpg", "caption": "a cat on a mat", "split": "train", "label": "cat"}

``image`` (a path relative to the folder) and ``caption`` are required; ``split`` ('train',
'val' or 'test') and ``label`` (any string) are optional, but each is given on every line
or on none. Lines with the same ``image`` are several captions of one image (in line
order), and must agree on its split and label. Blank lines are skipped.

Features per example:
  image: uint8 [h, w, 3], stored as JPEG with short side ``store_size`` (:mod:`files`),
    after the EXIF orientation is applied.
  captions: the image's captions.
  image_path: ``image`` as written in the file.
  label: only when lines have ``label``: a ClassLabel whose names are the distinct label
    strings, sorted (label id k names class ``names[k]``; zero-shot prompts use them).

Splits: those named by ``split``; without it, an image goes to 'test' when
``hash_fraction(image, "image_text_folder/<split_seed>") < test_fraction`` (SHA-256 of
seed and path, :mod:`splits`), else to 'train': a fixed, seeded choice per image, which
does not move when other lines are added. Within a split, images keep their first line's
order.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib

import tensorflow_datasets as tfds

from modgap_jax.data.builders import files, splits
from modgap_jax.errors import ConfigError

NAME = "image_text_folder"
SPLITS = ("train", "val", "test")
MANIFEST = "captions.jsonl"
LABEL_KEY = "label"


@dataclasses.dataclass
class FolderImage:
  image: str
  captions: list[str]
  split: str | None
  label: str | None
  line: int  # Of its first caption, for errors.


@dataclasses.dataclass(frozen=True)
class Manifest:
  """The parsed ``captions.jsonl``: images in first-line order, and the sorted label names."""

  images: tuple[FolderImage, ...]
  class_names: tuple[str, ...] | None  # None: the lines carry no labels.
  has_split: bool


def _field(record: dict, key: str, where: str, required: bool) -> str | None:
  if key not in record or record[key] is None:
    if required:
      raise ConfigError(f"{where}: field {key!r} is missing")
    return None
  value = record[key]
  if not isinstance(value, (str, int)) or isinstance(value, bool):
    raise ConfigError(f"{where}: field {key!r}={value!r} must be a string")
  return str(value)


def _merge(image: FolderImage, key: str, value: str | None, where: str) -> None:
  if getattr(image, key) != value:
    raise ConfigError(
      f"{where}: field {key!r}={value!r} differs from {getattr(image, key)!r} on line "
      f"{image.line} for image={image.image!r}"
    )


def parse_manifest(path: pathlib.Path) -> Manifest:
  """Reads ``captions.jsonl``; one-line ConfigError naming the file, line and field of a bad line."""
  if not path.is_file():
    raise ConfigError(f"caption file={str(path)!r} is missing; image_text_folder needs {MANIFEST} in dataset.path")
  images: dict[str, FolderImage] = {}
  seen = {"split": set(), "label": set()}  # Whether lines with and without each field occur.
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"caption file={str(path)!r} line {number}"
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ConfigError(f"{where} is not valid JSON: {e.msg}") from None
      if not isinstance(record, dict):
        raise ConfigError(f"{where} is not a JSON object")
      image = _field(record, "image", where, required=True)
      caption = " ".join(_field(record, "caption", where, required=True).split())
      if not caption:
        raise ConfigError(f"{where}: field 'caption' is empty")
      if os.path.isabs(image) or ".." in pathlib.PurePath(image).parts:
        raise ConfigError(f"{where}: field 'image'={image!r} must be a path inside the folder")
      split = _field(record, "split", where, required=False)
      if split is not None and split not in SPLITS:
        raise ConfigError(
          f"{where}: field 'split'={split!r} is not valid; choose one of {', '.join(map(repr, SPLITS))}"
        )
      label = _field(record, "label", where, required=False)
      for key, value in (("split", split), ("label", label)):
        seen[key].add(value is not None)
        if len(seen[key]) == 2:
          raise ConfigError(f"{where}: field {key!r} is given on some lines and not on others; give it on all or none")
      if image in images:
        _merge(images[image], "split", split, where)
        _merge(images[image], "label", label, where)
        images[image].captions.append(caption)
      else:
        images[image] = FolderImage(image, [caption], split, label, number)
  if not images:
    raise ConfigError(f"caption file={str(path)!r} has no lines")
  labels = sorted({im.label for im in images.values()}) if True in seen["label"] else None
  return Manifest(tuple(images.values()), None if labels is None else tuple(labels), True in seen["split"])


@functools.lru_cache(maxsize=8)
def _cached_manifest(path: str, stamp: str) -> Manifest:
  del stamp  # Part of the cache key only: an edited file is read again.
  return parse_manifest(pathlib.Path(path))


def manifest_of(root: str) -> Manifest:
  path = pathlib.Path(root) / MANIFEST
  return _cached_manifest(str(path), files.file_stamp(path))


def split_of(manifest: Manifest, test_fraction: float, split_seed: int) -> dict[str, list[FolderImage]]:
  """{split: images}, non-empty splits only; see the module doc for the seeded fraction."""
  result: dict[str, list[FolderImage]] = {name: [] for name in SPLITS}
  for image in manifest.images:
    if manifest.has_split:
      name = image.split
    else:
      test = splits.hash_fraction(image.image, f"{NAME}/{split_seed}") < test_fraction
      name = "test" if test else "train"
    result[name].append(image)
  return {name: images for name, images in result.items() if images}


class ImageTextFolder(files.FileBuilder):
  """Images with captions (and optional splits and labels) listed in ``captions.jsonl``."""

  PATH_HINT = "a folder with captions.jsonl"

  @classmethod
  def make_config(cls, options: files.FileOptions) -> files.FilesConfig:
    """Checks ``options`` and names the build after them (see :mod:`files`)."""
    options = files.check_options(NAME, options)
    options = dataclasses.replace(options, karpathy_split="")  # Unused here.
    stamp = files.file_stamp(pathlib.Path(options.path) / MANIFEST)
    name = files.config_name(options.path, [options.store_size, options.test_fraction, options.split_seed, stamp])
    return files.FilesConfig(name=name, version=cls.VERSION, description=f"folder {options.path}", options=options)

  def _manifest(self) -> Manifest:
    return manifest_of(self.builder_config.options.path)

  def _info(self) -> tfds.core.DatasetInfo:
    features = {
      "image": files.image_feature(),
      "captions": files.caption_feature(),
      "image_path": tfds.features.Text(),
    }
    class_names = self._manifest().class_names
    if class_names is not None:
      features[LABEL_KEY] = tfds.features.ClassLabel(names=list(class_names))
    return self._make_info(
      features=features, description=f"Images and captions listed in {MANIFEST} of a local folder."
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything comes from the local folder.
    options = self.builder_config.options
    manifest_path = os.path.join(options.path, MANIFEST)
    by_split = split_of(self._manifest(), options.test_fraction, options.split_seed)
    files.check_files_exist(
      (os.path.join(options.path, im.image) for ims in by_split.values() for im in ims), manifest_path
    )
    return {name: self._generate_examples(images) for name, images in by_split.items()}

  def _generate_examples(self, images):
    root = self.builder_config.options.path
    encoded = files.prepare_images(
      [os.path.join(root, im.image) for im in images],
      self.builder_config.options.store_size,
      upright=True,
      num_threads=self._num_threads,
    )
    with_label = self._manifest().class_names is not None
    for image, jpeg in zip(images, encoded):
      example = {"image": jpeg, "captions": image.captions, "image_path": image.image}
      if with_label:
        example[LABEL_KEY] = image.label
      yield image.image, example
