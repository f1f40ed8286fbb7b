"""What the builders of user files share: options, cache keys and parallel image preparation.

``coco_raw`` and ``image_text_folder`` read a folder named by ``config.dataset.path``. One
builder class serves every folder, so each build is a TFDS builder config whose name keys
the cache:

  name = "<folder name>_<h>",  h = first 12 hex digits of SHA-256 over
         (resolved path, the options that change the records, size and mtime of the
          index files: the COCO annotations, Karpathy's split file, captions.jsonl)

so two folders, or one folder with other options, or an edited index file, never share a
build (``<data_dir>/<dataset>/<name>/<version>/``). Images edited in place are not seen:
delete that build to redo it.

Images are decoded, made RGB, resized so that their short side is ``store_size`` (never
upscaled; 0 keeps them as they are; the aspect ratio is kept, so that the pipeline can
centre-crop for evaluation and random-resized-crop for training), and stored as JPEG
(quality ``JPEG_QUALITY``). That runs in a thread pool: Pillow releases the GIL while it
decodes, resizes and encodes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from PIL import Image, ImageOps

from modgap_jax.data.builders import base
from modgap_jax.errors import ConfigError

DEFAULT_STORE_SIZE = 256
DEFAULT_TEST_FRACTION = 0.1
JPEG_QUALITY = 95
# Images handed to the pool at once: bounds memory while keeping every thread busy.
_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class FileOptions:
  """What a file dataset is built from (see ``configs/default.py``'s dataset block).

  Attributes:
    path: the folder (COCO root, or a folder with ``captions.jsonl``).
    store_size: short side of stored images in pixels (never upscaled); 0 keeps them as they are.
    karpathy_split: coco_raw only: Karpathy's ``dataset_coco.json``; '' looks for it in the
      root and in ``annotations/``.
    test_fraction: image_text_folder without ``split`` fields: the share of images in 'test'.
    split_seed: image_text_folder without ``split`` fields: which images those are.
  """

  path: str
  store_size: int = DEFAULT_STORE_SIZE
  karpathy_split: str = ""
  test_fraction: float = DEFAULT_TEST_FRACTION
  split_seed: int = 0


@dataclasses.dataclass(eq=False)
class FilesConfig(tfds.core.BuilderConfig):
  """A builder config that carries the options; its name is the cache key."""

  options: FileOptions | None = None


def _check_whole(field: str, value, must_be: str) -> None:
  """``dataset.<field>`` is an integer >= 0 (not a bool); else a one-line ConfigError saying what it must be."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ConfigError(f"dataset.{field}={value!r} must be {must_be}")


def check_options(dataset: str, options: FileOptions) -> FileOptions:
  """Returns the options with ``path`` resolved; one-line ConfigError for a bad field."""
  if not options.path:
    raise ConfigError(f"dataset.path is empty; dataset={dataset!r} reads its files from that folder")
  root = pathlib.Path(options.path).expanduser().resolve()
  if not root.is_dir():
    raise ConfigError(f"dataset.path={str(root)!r} is not a folder (dataset={dataset!r})")
  _check_whole("store_size", options.store_size, "an integer >= 0 (0 keeps images as they are)")
  if not 0.0 < float(options.test_fraction) < 1.0:
    raise ConfigError(f"dataset.test_fraction={options.test_fraction!r} must lie in (0, 1)")
  _check_whole("split_seed", options.split_seed, "a non-negative integer")
  return dataclasses.replace(
    options,
    path=str(root),
    store_size=int(options.store_size),
    test_fraction=float(options.test_fraction),
    split_seed=int(options.split_seed),
  )


def file_stamp(path: pathlib.Path | None) -> str:
  """'<size>:<mtime_ns>' of a file, or '-' when there is none: edits change the cache key."""
  if path is None or not path.is_file():
    return "-"
  stat = path.stat()
  return f"{stat.st_size}:{stat.st_mtime_ns}"


def config_name(root: str, keyed: Iterable[object]) -> str:
  """``<folder name>_<first 12 hex digits of SHA-256 over root and keyed>``; a valid TFDS name."""
  digest = hashlib.sha256("\n".join([root, *map(str, keyed)]).encode("utf-8")).hexdigest()[:12]
  stem = re.sub(r"[^a-z0-9]+", "_", pathlib.Path(root).name.lower()).strip("_")[:40] or "root"
  return f"{stem}_{digest}"


def stored_shape(width: int, height: int, store_size: int) -> tuple[int, int]:
  """(w', h') with ``min(w', h') = min(store_size, min(w, h))`` and the aspect ratio kept.

  ``s = store_size / min(w, h)`` when that is < 1 (else 1: never upscale);
  ``w' = max(1, round(w s))``, ``h' = max(1, round(h s))``.
  """
  scale = store_size / min(width, height) if store_size else 1.0
  if scale >= 1.0:
    return width, height
  return max(1, round(width * scale)), max(1, round(height * scale))


def prepare_image(path: str, store_size: int, upright: bool) -> bytes:
  """Reads one image file and returns it as stored: RGB JPEG, short side ``store_size``.

  Args:
    path: the image file (any format Pillow reads).
    store_size: see :func:`stored_shape`.
    upright: apply the EXIF orientation (photos from phones); COCO's annotations refer
      to the pixels as stored, so coco_raw keeps them.

  Raises:
    ConfigError naming the file when it is missing or Pillow cannot read it.
  """
  try:
    with Image.open(path) as image:
      if store_size:
        # JPEG: decode at a reduced scale (DCT scaling) when that still covers the target.
        image.draft("RGB", stored_shape(image.width, image.height, store_size))
      if upright:
        image = ImageOps.exif_transpose(image)
      image = image.convert("RGB")
      size = stored_shape(image.width, image.height, store_size)
      if size != image.size:
        image = image.resize(size, Image.BICUBIC)
      out = io.BytesIO()
      image.save(out, format="JPEG", quality=JPEG_QUALITY)
      return out.getvalue()
  except FileNotFoundError:
    raise ConfigError(f"image file={path!r} is missing") from None
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise ConfigError(f"image file={path!r} cannot be read: {e}".replace("\n", " ")) from None


def default_threads() -> int:
  return max(1, min(os.cpu_count() or 1, 32))


def prepare_images(
  paths: Sequence[str], store_size: int, upright: bool, num_threads: int | None = None
) -> Iterator[bytes]:
  """:func:`prepare_image` over ``paths`` in a thread pool; yields the results in order, with a progress bar."""
  threads = num_threads or default_threads()
  with (
    concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="modgap_jax-images") as pool,
    tqdm.tqdm(total=len(paths), desc="preparing images", unit="image", leave=False) as bar,
  ):
    for start in range(0, len(paths), _CHUNK):
      chunk = paths[start : start + _CHUNK]
      yield from pool.map(prepare_image, chunk, [store_size] * len(chunk), [upright] * len(chunk))
      bar.update(len(chunk))


def check_files_exist(paths: Iterable[str], index_file: str) -> None:
  """One listing per folder instead of a stat per image (COCO has 123k); ConfigError on the first missing."""
  listings: dict[str, frozenset[str]] = {}
  for path in paths:
    folder, name = os.path.split(path)
    if folder not in listings:
      listings[folder] = frozenset(os.listdir(folder)) if os.path.isdir(folder) else frozenset()
    if name not in listings[folder]:
      raise ConfigError(f"image file={path!r} is missing (listed in {index_file!r})")


def image_feature() -> tfds.features.Image:
  return tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")


def caption_feature() -> tfds.features.Sequence:
  return tfds.features.Sequence(tfds.features.Text())


class FileBuilder(base.OfflineBuilder, skip_registration=True):
  """A builder of files under ``dataset.path``: one build per :class:`FilesConfig`, none without."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  PATH_HINT = "a folder"  # what dataset.path must name, for the error without one

  def __init__(self, *, config: FilesConfig | None = None, num_threads: int | None = None, **kwargs):
    if config is None or config.options is None:
      raise ConfigError(
        f"dataset={self.name!r} needs dataset.path, {self.PATH_HINT}; build it with "
        f"modgap_jax.data.load_examples({self.name!r}, split, path=...)"
      )
    self._num_threads = num_threads
    super().__init__(config=config, **kwargs)
