"""A split as the pipeline sees it: images, their captions and their integer labels.

Two implementations share one small interface (``len``, ``captions``, ``labels``,
``fetch``, ``originals``, ``class_names``, and ``tokens``: every caption encoded once,
cached per tokenizer):

- :class:`InMemoryExamples`: the whole split in host memory at native size; images are
  resized to the requested size once and cached (the local datasets are small).
- :class:`LazyExamples`: reads and resizes per batch from a data source (COCO-sized data).

:func:`load_examples` picks: lazily read for the COCO datasets and for an
image_text_folder split of more than ``LAZY_ABOVE_IMAGES`` images, in memory otherwise.

Images come out as uint8 RGB [b, S, S, 3]; normalisation happens per batch in the
pipeline, so the cache holds uint8 (4x smaller than float32).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tqdm
from PIL import Image

from modgap_jax.data import registry, text
from modgap_jax.data.builders import coco, coco_raw, image_text_folder

Record = tuple[np.ndarray, list[str], dict[str, int]]

# Above this size the resized cache is skipped and images are resized per batch instead
# (e.g. 60k Fashion-MNIST images at 224 px would take 9 GB).
DEFAULT_CACHE_LIMIT_BYTES = 4 << 30
# An image_text_folder split above this many images is read per batch: stored at 256 px
# short side, 10k decoded images take about 2.6 GB of host memory.
LAZY_ABOVE_IMAGES = 10_000
_READ_CHUNK = 2048


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [h, w, c] (c = 1 or 3) -> uint8 RGB [size, size, 3].

  Bicubic resize of the shorter side to ``size`` and a centre crop (CLIP's eval
  transform); square images are simply resized, and kept as they are at ``size``.
  """
  h, w = image.shape[:2]
  if (h, w) != (size, size):
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    pil = pil.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = np.asarray(pil.crop((left, top, left + size, top + size)))
    if image.ndim == 2:
      image = image[..., None]
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image


def resize_images(images: Sequence[np.ndarray], size: int, progress: bool = False) -> np.ndarray:
  """Resizes a batch with :func:`resize_image`; uint8 [n, size, size, 3]."""
  out = np.empty((len(images), size, size, 3), dtype=np.uint8)
  bar = tqdm.tqdm(images, desc=f"resizing to {size}px", disable=not progress, leave=False)
  for i, image in enumerate(bar):
    out[i] = resize_image(image, size)
  return out


class Examples(abc.ABC):
  """A split of image-caption examples, indexed 0..len-1."""

  label_keys: tuple[str, ...] = ()
  # {label_key: names}: label id k of that key names class names[k] (from the dataset's
  # ClassLabel features; empty when unknown).
  class_names: Mapping[str, tuple[str, ...]] = {}

  @abc.abstractmethod
  def __len__(self) -> int:
    """The number of images."""

  @abc.abstractmethod
  def captions(self) -> list[list[str]]:
    """Every image's captions, in index order."""

  @abc.abstractmethod
  def labels(self) -> dict[str, np.ndarray]:
    """``{label_key: int32 [len]}``; empty when the dataset has no labels."""

  @abc.abstractmethod
  def fetch(self, indices: np.ndarray, image_size: int) -> tuple[np.ndarray, list[list[str]]]:
    """Returns uint8 RGB images [b, S, S, 3] and the caption lists of ``indices``."""

  def originals(self, indices: np.ndarray) -> list[np.ndarray]:
    """The images of ``indices`` as stored, uint8 [h_i, w_i, c] (c = 1 or 3): for random crops."""
    raise NotImplementedError(f"{type(self).__name__} gives no stored images; random crops need them")

  def tokens(self, tokenizer: text.Tokenizer, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Every caption encoded once, image-major, and the image each caption belongs to.

    Computed on the first call per (tokenizer, context_length) and kept with the split, so
    that neither the training loop nor evaluation encodes a caption more than once.

    Args:
      tokenizer: encodes the captions (tokenizers compare equal when they encode alike).
      context_length: token slots L per caption.

    Returns:
      ``(tokens, caption_image_index)``: int32 [C, L] and int32 [C], C the split's number of
      captions, in :meth:`captions` order flattened (all of image 0's, then image 1's, ...).
      Both are read-only: every caller shares them.
    """
    text.check_context_length(context_length)
    key = (tokenizer, int(context_length))
    cache = self.__dict__.setdefault("_token_cache", {})
    if key not in cache:
      captions = self.captions()
      tokens = tokenizer.encode([t for caps in captions for t in caps], context_length)
      image_index = np.repeat(np.arange(len(captions), dtype=np.int32), [len(c) for c in captions])
      for array in (tokens, image_index):
        array.setflags(write=False)
      cache[key] = (tokens, image_index)
    return cache[key]

  def __getstate__(self):
    # The token cache is derived and can be large (COCO's ~600k captions at L = 77 take
    # 180 MB), so copies sent to worker processes leave it behind.
    state = self.__dict__.copy()
    state.pop("_token_cache", None)
    return state


class InMemoryExamples(Examples):
  """A split held in memory; resized images are cached per image size."""

  def __init__(
    self,
    images: Sequence[np.ndarray] | np.ndarray,
    captions: Sequence[Sequence[str]],
    labels: Mapping[str, np.ndarray] | None = None,
    *,
    cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES,
    class_names: Mapping[str, Sequence[str]] | None = None,
  ):
    if len(images) != len(captions):
      raise ValueError(f"{len(images)} images but {len(captions)} caption lists")
    empty = [i for i, c in enumerate(captions) if not len(c)]
    if empty:
      raise ValueError(f"images {empty[:5]} have no caption")
    self._images = images
    self._captions = [list(c) for c in captions]
    self._labels = {k: np.asarray(v, dtype=np.int32) for k, v in (labels or {}).items()}
    self.label_keys = tuple(self._labels)
    self.class_names = {k: tuple(v) for k, v in (class_names or {}).items()}
    self._cache_limit_bytes = cache_limit_bytes
    self._resized: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self._captions)

  def captions(self) -> list[list[str]]:
    return self._captions

  def labels(self) -> dict[str, np.ndarray]:
    return dict(self._labels)

  def resized(self, image_size: int) -> np.ndarray | None:
    """All images at ``image_size`` (computed once), or None if that exceeds the cache limit."""
    if image_size not in self._resized:
      if len(self) * image_size * image_size * 3 > self._cache_limit_bytes:
        return None
      self._resized[image_size] = resize_images(self._images, image_size, progress=len(self) > 5000)
    return self._resized[image_size]

  def fetch(self, indices, image_size):
    indices = np.asarray(indices)
    cached = self.resized(image_size)
    if cached is not None:
      images = cached[indices]
    else:
      images = resize_images([self._images[i] for i in indices], image_size)
    return images, [self._captions[i] for i in indices]

  def originals(self, indices):
    return [self._images[int(i)] for i in indices]


class LazyExamples(Examples):
  """Reads examples from a random-access source per batch (for data too big to cache)."""

  def __init__(
    self,
    source,
    to_record: Callable[[Mapping[str, Any]], Record],
    *,
    class_names: Mapping[str, Sequence[str]] | None = None,
  ):
    self._source = source
    self._to_record = to_record
    self._captions: list[list[str]] | None = None
    self.class_names = {k: tuple(v) for k, v in (class_names or {}).items()}

  def __len__(self) -> int:
    return len(self._source)

  def _read(self, indices) -> list[Record]:
    return [self._to_record(ex) for ex in _get_items(self._source, [int(i) for i in indices])]

  def captions(self) -> list[list[str]]:
    if self._captions is None:  # One pass over the source (it decodes images too).
      self._captions = [caps for _, caps, _ in _read_all(self._source, self._to_record)]
    return self._captions

  def labels(self) -> dict[str, np.ndarray]:
    return {}

  def fetch(self, indices, image_size):
    records = self._read(indices)
    return resize_images([r[0] for r in records], image_size), [r[1] for r in records]

  def originals(self, indices):
    return [r[0] for r in self._read(indices)]


def _get_items(source, indices: list[int]) -> list[Mapping[str, Any]]:
  if hasattr(source, "__getitems__"):
    return list(source.__getitems__(indices))
  return [source[i] for i in indices]


def _read_all(source, to_record) -> list[Record]:
  records = []
  with tqdm.tqdm(total=len(source), desc="reading examples", disable=len(source) <= 5000, leave=False) as bar:
    for start in range(0, len(source), _READ_CHUNK):
      chunk = list(range(start, min(start + _READ_CHUNK, len(source))))
      records.extend(to_record(ex) for ex in _get_items(source, chunk))
      bar.update(len(chunk))
  return records


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def local_record_fn(label_keys: Sequence[str]) -> Callable[[Mapping[str, Any]], Record]:
  """Adapter for this project's builders: image, captions and the given label features."""

  def to_record(example):
    image = np.asarray(example["image"], dtype=np.uint8)
    captions = [_text(c) for c in np.asarray(example["captions"], dtype=object).reshape(-1)]
    return image, captions, {k: int(example[k]) for k in label_keys}

  return to_record


def record_fn_for(name: str, source=None) -> Callable[[Mapping[str, Any]], Record]:
  """The adapter from dataset ``name``'s examples to records (labels: those ``source`` has)."""
  if name == coco.NAME:
    return coco.to_record
  return local_record_fn(registry.source_label_keys(name, source))


def source_class_names(name: str, source) -> dict[str, tuple[str, ...]]:
  """{label_key: ClassLabel names} of a data source; {} when it does not say."""
  features = getattr(getattr(source, "dataset_info", None), "features", None)
  names = {}
  for key in registry.source_label_keys(name, source):
    feature_names = getattr(features[key], "names", None) if features is not None else None
    if feature_names:
      names[key] = tuple(feature_names)
  return names


def _source_name(source) -> str:
  info = getattr(source, "dataset_info", None)
  name = getattr(info, "name", None)
  if name not in registry.DATASETS:
    raise ValueError(
      f"cannot tell which dataset this source holds (dataset_info.name={name!r}); pass an Examples object instead"
    )
  return name


def from_source(
  source, name: str | None = None, *, in_memory: bool = True, cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES
) -> Examples:
  """Wraps a TFDS data source of one of ``registry.DATASETS``.

  Args:
    source: what :func:`registry.load` returns.
    name: the dataset's name; read from ``source.dataset_info`` when omitted.
    in_memory: read the whole split now (True) or per batch (False).
    cache_limit_bytes: see :class:`InMemoryExamples`.
  """
  name = name or _source_name(source)
  to_record = record_fn_for(name, source)
  class_names = source_class_names(name, source)
  if not in_memory:
    return LazyExamples(source, to_record, class_names=class_names)
  records = _read_all(source, to_record)
  keys = registry.source_label_keys(name, source)
  labels = {k: np.array([r[2][k] for r in records], dtype=np.int32) for k in keys}
  images = [r[0] for r in records]
  if records and len({im.shape for im in images}) == 1:
    images = np.stack(images)  # One array: cheaper to hold and to index.
  return InMemoryExamples(
    images, [r[1] for r in records], labels, cache_limit_bytes=cache_limit_bytes, class_names=class_names
  )


def default_in_memory(name: str, num_images: int) -> bool:
  """Whether :func:`load_examples` reads a split into memory when not told (see the module doc)."""
  if name in (coco.NAME, coco_raw.NAME):
    return False
  if name == image_text_folder.NAME:
    return num_images <= LAZY_ABOVE_IMAGES
  return True


def load_examples(
  name: str,
  split: str,
  data_dir: str | os.PathLike | None = None,
  *,
  in_memory: bool | None = None,
  source_dir: str | os.PathLike | None = None,
  cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES,
  path: str | os.PathLike | None = None,
  **file_kwargs,
) -> Examples:
  """Loads (building if needed) ``name``/``split`` for the pipeline.

  Args:
    name, split, data_dir, source_dir: as for :func:`registry.load`.
    in_memory: default :func:`default_in_memory`: False for the COCO datasets and for
      image_text_folder splits above ``LAZY_ABOVE_IMAGES`` images, True otherwise.
    cache_limit_bytes: see :class:`InMemoryExamples`.
    path, **file_kwargs: coco_raw and image_text_folder only: the folder they read and the
      other build options (``store_size``, ``karpathy_split``, ``test_fraction``,
      ``split_seed``, ``num_threads``); see :func:`registry.builder`. From a config:
      ``load_examples(c.name, split, data_dir, **registry.file_options(c))``.
  """
  source = registry.load(name, split, data_dir, source_dir=source_dir, path=path, **file_kwargs)
  if in_memory is None:
    in_memory = default_in_memory(name, len(source))
  return from_source(source, name, in_memory=in_memory, cache_limit_bytes=cache_limit_bytes)


def as_examples(data) -> Examples:
  """Accepts an :class:`Examples` or a data source from :func:`registry.load`."""
  if isinstance(data, Examples):
    return data
  return from_source(data)
