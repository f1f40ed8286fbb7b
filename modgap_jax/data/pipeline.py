"""The host-side input pipeline: training and evaluation batches, and prefetching.

All iterators take ``data``: an :class:`examples.Examples` (load it once with
:func:`examples.load_examples` and reuse it) or a data source from :func:`registry.load`
(read into memory on every call). Batches are laid out for ``jax.pmap``: a leading
device axis [num_devices, per_device, ...]. Images are float32 NHWC RGB, normalised as
``(x / 255 - mean) / std`` (CLIP's mean and std by default). Captions come from the
split's cached tokens (:meth:`examples.Examples.tokens`): each is encoded once per run,
never per step.

Training, infinite, one batch per step, as a :class:`TrainStream` spec fixes them:
  {'image': f32 [D, B/D, S, S, 3], 'text': int32 [D, B/D, L]}
  (tokens from the spec's ``tokenizer``, the byte tokenizer by default)
  - epoch e visits every image at most once in the order ``epoch_permutation(seed, e, n)``
    and drops the last ``n mod B`` images of that order;
  - each image gets one caption per epoch, ``captions[i][floor(u(seed, e, i) * k_i)]``
    with u uniform in [0, 1) (``epoch_caption_draws``), k_i its number of captions;
  - step s is a pure function of (seed, s), so starting at ``start_step`` resumes exactly;
  - images are the split's centre crops (``Examples.fetch``), or, with the spec's
    ``crop_scale`` given, CLIP's random-resized crops of the stored images (:func:`crop_box`),
    drawn from ``crop_rng(seed, s, slot)``, slot the image's position in the global batch:
    still a pure function of (seed, s), and each process of a multi-host run crops its
    share as one process would.
  The spec checks its fields once, when it is made, and the iterators trust it. Two
  iterators yield these same batches:
  - :func:`train_batches` makes them on the thread that iterates (wrap it in
    :func:`prefetch` to overlap with device compute): enough when resizing is cheap or
    cached, as for the small in-memory splits (which the trainer usually keeps on the
    devices anyway, see :mod:`modgap_jax.data.resident`);
  - :func:`grain_train_batches` makes them in ``num_workers`` processes: for splits read
    and decoded per batch (COCO at 224 px, a :class:`examples.LazyExamples`), whose JPEG
    decoding and resizing would otherwise hold up the training loop.

Why grain for the workers: it reads ``tfds.data_source``s and any random-access source
without TensorFlow, and a ``MapDataset`` indexed by step maps directly onto "batch s is a
pure function of (seed, s)", so order, caption choice and resumption stay ours and exact.
``mp_prefetch`` then runs that map in worker processes (decoding and resizing scale past
the GIL), hands the arrays back through shared memory, and keeps the step order whatever
the number of workers. The alternatives each cost more: PyTorch's DataLoader would make
torch a core dependency of a JAX project, tf.data needs TensorFlow (which the project
avoids), and a hand-made ``multiprocessing`` pool would have to redo shared-memory
transfer, ordering, error propagation and shutdown.

Evaluation covers a split exactly once, padding the last batch (mask False, indices and
labels -1, images and tokens 0):
  :func:`eval_image_batches` -> {'image': f32 [D, b, S, S, 3], 'mask': bool [D, b],
                                  'index': int32 [D, b], <label key>: int32 [D, b], ...}
  :func:`eval_text_batches`  -> {'text': int32 [D, b, L], 'mask': bool [D, b],
                                  'image_index': int32 [D, b], 'caption_index': int32 [D, b]}
  Images are visited in index order, captions image-major (all of image 0's, then
  image 1's, ...); 'index' / 'image_index' are global example indices, so
  ``embeddings[index[mask]]`` and ``image_index[mask]`` line up across the two for
  retrieval, and labels line up with image embeddings for zero-shot / linear probes.

:func:`prefetch` runs any iterator a few items ahead on a background thread.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import queue
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from modgap_jax import numerics, quiet
from modgap_jax.data import examples as examples_lib
from modgap_jax.data import text
from modgap_jax.errors import ConfigError, check_number

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Stream ids that keep the permutation and the caption draws of an epoch independent.
_PERMUTATION_STREAM = 0
_CAPTION_STREAM = 1
# The stream of the random-resized crops: their generator is seeded by (seed, step, slot, 2),
# four words, so it never coincides with an epoch's three-word generators either.
_CROP_STREAM = 2

# CLIP's random-resized crop draws aspect ratios (w/h) log-uniformly in [3/4, 4/3].
DEFAULT_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_CROP_ATTEMPTS = 10

_BYTES = text.ByteTokenizer()


def normalize(images: np.ndarray, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> np.ndarray:
  """uint8 [..., 3] -> float32 ``(x / 255 - mean) / std``."""
  scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float32))
  shift = np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
  out = np.multiply(images, scale, dtype=np.float32)  # One fused cast-and-scale pass.
  out -= shift
  return out


def _check_channels(field: str, values: Any, *, positive: bool = False) -> tuple[float, float, float]:
  """``values`` as 3 floats, one per RGB channel (positive ones if asked); else a one-line ConfigError."""
  channels = tuple(values) if isinstance(values, Iterable) else ()
  real = lambda x: isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
  if len(channels) != 3 or not all(map(real, channels)):
    raise ConfigError(f"{field}={values!r} must hold 3 finite numbers, one per RGB channel")
  if positive and min(channels) <= 0:
    raise ConfigError(f"{field}={values!r} must be positive")
  return tuple(float(x) for x in channels)


def _check_batch(field: str, batch_size: int, num_devices: int) -> None:
  check_number(field, batch_size, 1, integer=True)
  check_number("num_devices", num_devices, 1, integer=True)
  if batch_size % num_devices:
    raise ConfigError(f"{field}={batch_size} is not divisible by num_devices={num_devices}")


def _device_split(array: np.ndarray, num_devices: int) -> np.ndarray:
  return array.reshape((num_devices, array.shape[0] // num_devices) + array.shape[1:])


# ------------------------------------------------------------------------------ training


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full batches per epoch; the remainder of each epoch is dropped."""
  return num_examples // global_batch_size


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The visiting order of ``epoch``: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch, _PERMUTATION_STREAM]).permutation(num_examples)


def epoch_caption_draws(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """float64 [n] in [0, 1): image i uses caption ``floor(u[i] * num_captions[i])`` in ``epoch``."""
  return np.random.default_rng([seed, epoch, _CAPTION_STREAM]).random(num_examples)


class _StepPlan:
  """Which images and which caption rows make (this process's share of) each step.

  A pure function of (seed, step) given the split; it remembers the last epoch's order and
  draws, as each epoch's steps are asked for in a row. Grain pickles one copy into every
  worker, and may call it from a few threads at once (see :meth:`__call__`).
  """

  def __init__(
    self,
    caption_image_index: np.ndarray,
    num_examples: int,
    global_batch_size: int,
    seed: int,
    process_index: int,
    process_count: int,
  ):
    self._num_captions = np.bincount(caption_image_index, minlength=num_examples)
    self._first_row = np.cumsum(self._num_captions) - self._num_captions
    self._num_examples = num_examples
    self._global_batch_size = global_batch_size
    self._per_epoch = steps_per_epoch(num_examples, global_batch_size)
    self._per_process = global_batch_size // process_count
    self._offset = process_index * self._per_process
    self._seed = seed
    self._epoch: tuple[int | None, Any, Any] = (None, None, None)

  @property
  def seed(self) -> int:
    return self._seed

  @property
  def first_slot(self) -> int:
    """The global-batch position of this process's first image."""
    return self._offset

  def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (image indices, caption rows of ``Examples.tokens``), each int [B/P]."""
    epoch, position = divmod(int(step), self._per_epoch)
    cached = self._epoch
    if cached[0] != epoch:
      cached = (
        epoch,
        epoch_permutation(self._seed, epoch, self._num_examples),
        epoch_caption_draws(self._seed, epoch, self._num_examples),
      )
      self._epoch = cached  # One assignment, so a concurrent call never sees a mixed epoch.
    _, order, draws = cached
    start = position * self._global_batch_size + self._offset
    indices = order[start : start + self._per_process]
    choice = np.floor(draws[indices] * self._num_captions[indices]).astype(np.int64)
    return indices, self._first_row[indices] + choice


# ------------------------------------------------------------------ random-resized crops


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
  """CLIP's training crop: a box of area share in ``scale`` and aspect (w/h) in ``ratio``."""

  scale: tuple[float, float]
  ratio: tuple[float, float] = DEFAULT_CROP_RATIO


def random_resized_crop(
  crop_scale: Sequence[float] | None,
  crop_ratio: Sequence[float] = DEFAULT_CROP_RATIO,
  *,
  scale_field: str = "crop_scale",
  ratio_field: str = "crop_ratio",
) -> RandomResizedCrop | None:
  """Checks the crop arguments; None (or empty) ``crop_scale`` turns the crop off.

  Needs ``0 < ratio[0] <= ratio[1]``, even with the crop off (so that a checked ratio is
  always a valid one), and ``0 < scale[0] <= scale[1] <= 1``; one-line ConfigError naming
  the field (as ``scale_field`` or ``ratio_field``) otherwise.
  """
  ratio = tuple(float(x) for x in crop_ratio)
  if len(ratio) != 2 or not 0.0 < ratio[0] <= ratio[1] or not all(map(math.isfinite, ratio)):
    raise ConfigError(f"{ratio_field}={tuple(crop_ratio)!r} must be (low, high) with 0 < low <= high")
  if crop_scale is None or len(crop_scale) == 0:
    return None
  scale = tuple(float(x) for x in crop_scale)
  if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
    raise ConfigError(
      f"{scale_field}={tuple(crop_scale)!r} must be (low, high) with 0 < low <= high <= 1, or () for no random crop"
    )
  return RandomResizedCrop(scale, ratio)


def crop_rng(seed: int, step: int, slot: int) -> np.random.Generator:
  """The generator of one crop: ``default_rng([seed, step, slot, 2])``, slot in [0, B)."""
  return np.random.default_rng([int(seed), int(step), int(slot), _CROP_STREAM])


def crop_box(rng: np.random.Generator, height: int, width: int, crop: RandomResizedCrop) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a random-resized crop of an [height, width] image.

  Up to 10 attempts, each drawing, in this order from ``rng``,
    a = H W · U(scale),  r = exp(U(log ratio)),  w = round(sqrt(a r)),  h = round(sqrt(a / r));
  the first with ``0 < w <= W`` and ``0 < h <= H`` draws top ~ integers(0, H - h + 1) and
  left ~ integers(0, W - w + 1). If none fits, the centre crop of the largest box whose
  aspect is ``r`` clamped to ``ratio`` (the whole image when W / H lies in ``ratio``).
  """
  area = height * width
  log_ratio = (math.log(crop.ratio[0]), math.log(crop.ratio[1]))
  for _ in range(_CROP_ATTEMPTS):
    target = area * rng.uniform(crop.scale[0], crop.scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < crop.ratio[0]:
    w, h = width, int(round(width / crop.ratio[0]))
  elif in_ratio > crop.ratio[1]:
    w, h = int(round(height * crop.ratio[1])), height
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """uint8 [H, W, c] -> uint8 RGB [size, size, 3]: the box, cut out, then resized bicubically.

  Cutting first means the filter sees only the box's pixels (edges replicated), as in CLIP.
  """
  top, left, h, w = box
  patch = np.ascontiguousarray(image[top : top + h, left : left + w])
  pil = Image.fromarray(patch[..., 0] if patch.shape[-1] == 1 else patch)
  out = np.asarray(pil.resize((size, size), Image.BICUBIC))
  if out.ndim == 2:
    out = out[..., None]
  return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def crop_images(
  images: Sequence[np.ndarray], seed: int, step: int, slots: Sequence[int], crop: RandomResizedCrop, size: int
) -> np.ndarray:
  """uint8 [b, size, size, 3]: image k cropped by ``crop_box(crop_rng(seed, step, slots[k]), ...)``."""
  out = np.empty((len(images), size, size, 3), dtype=np.uint8)
  for k, (image, slot) in enumerate(zip(images, slots)):
    box = crop_box(crop_rng(seed, step, slot), image.shape[0], image.shape[1], crop)
    out[k] = resized_crop(image, box, size)
  return out


class _MakeImages:
  """Step -> that step's normalised images and caption rows: the work grain's workers do.

  The caption rows travel with the images and the tokens are looked up by :class:`_AddText`
  in the main process, so the split's token array is never copied into the workers.
  """

  def __init__(
    self,
    data: examples_lib.Examples,
    plan: _StepPlan,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    num_devices: int,
    crop: RandomResizedCrop | None = None,
  ):
    self._data = data
    self._plan = plan
    self._image_size = image_size
    self._mean = tuple(mean)
    self._std = tuple(std)
    self._num_devices = num_devices
    self._crop = crop

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    indices, rows = self._plan(step)
    if self._crop is None:
      images, _ = self._data.fetch(indices, self._image_size)
    else:
      slots = self._plan.first_slot + np.arange(len(indices))  # Positions in the global batch.
      images = crop_images(
        self._data.originals(indices), self._plan.seed, int(step), slots, self._crop, self._image_size
      )
    return {"image": _device_split(normalize(images, self._mean, self._std), self._num_devices), "rows": rows}


class _AddText:
  """Replaces a batch's caption rows by their tokens, split over the devices."""

  def __init__(self, tokens: np.ndarray, num_devices: int):
    self._tokens = tokens
    self._num_devices = num_devices

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"image": batch["image"], "text": _device_split(self._tokens[batch["rows"]], self._num_devices)}


@dataclasses.dataclass(frozen=True)
class TrainStream:
  """What fixes a run's training batches, apart from the data and the start step.

  Both training iterators take one (see the module doc). Its fields are checked once, when
  it is made (a one-line ConfigError naming the field otherwise), and the iterators trust
  them. Sequences are stored as tuples, numbers as ``int`` and ``float``, so a spec
  never changes once made; ``dataclasses.replace`` makes (and checks) a changed copy.

  Attributes:
    global_batch_size: images per step over all processes and devices; divisible by
      ``num_devices * process_count``.
    num_devices: local devices (the leading axis of every array).
    image_size: output side S in pixels.
    context_length: token slots L per caption, at least 2 (room for SOT and EOT).
    seed: integer in [0, 2**31); fixes every epoch's order, caption choice and crops.
    mean, std: per-channel normalisation, 3 numbers each; std positive.
    process_index, process_count: for multi-host training, each process takes its
      contiguous ``1/process_count`` share of every global batch.
    tokenizer: encodes the captions; None is the byte tokenizer.
    crop_scale: None: every image is its centre crop (the default; an empty sequence
      becomes None). (low, high): CLIP's random-resized crop of the stored image instead,
      with area share in [low, high] (CLIP: (0.9, 1.0)) and aspect ratio in ``crop_ratio``;
      see :func:`crop_box`. Needs ``Examples.originals``, which both splits have.
    crop_ratio: (low, high) aspect ratios (w/h) of the random crop; default (3/4, 4/3).
    names: init only, not stored: the name each field goes by in the error messages, for a
      caller whose users set these values under other names (a trainer passes its config
      fields, e.g. ``{"global_batch_size": "batch_size", "mean": "dataset.mean"}``); a
      field it leaves out goes by its own name.
  """

  global_batch_size: int
  num_devices: int
  image_size: int
  context_length: int
  seed: int
  mean: tuple[float, float, float] = CLIP_MEAN
  std: tuple[float, float, float] = CLIP_STD
  process_index: int = 0
  process_count: int = 1
  tokenizer: text.Tokenizer | None = None
  crop_scale: tuple[float, float] | None = None
  crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO
  names: dataclasses.InitVar[Mapping[str, str] | None] = None

  def __post_init__(self, names: Mapping[str, str] | None):
    names = dict(names or {})
    unknown = set(names) - {f.name for f in dataclasses.fields(self)}
    if unknown:  # A caller's typo would otherwise name the field wrongly, silently.
      raise TypeError(f"names has keys that are no fields of TrainStream: {sorted(unknown)}")
    name = lambda field: names.get(field, field)
    # Frozen: object.__setattr__ stores the normalised values.
    put = lambda field, value: object.__setattr__(self, field, value)
    for field in ("global_batch_size", "num_devices", "image_size", "process_count"):
      put(field, check_number(name(field), getattr(self, field), 1, integer=True))
    index = check_number(name("process_index"), self.process_index, 0, self.process_count - 1, integer=True)
    put("process_index", index)
    shards = self.num_devices * self.process_count
    if self.global_batch_size % shards:
      raise ConfigError(
        f"{name('global_batch_size')}={self.global_batch_size} is not divisible by "
        f"{name('num_devices')}={self.num_devices} × {name('process_count')}={self.process_count}, "
        "the devices of all processes"
      )
    put("seed", check_number(name("seed"), self.seed, 0, 2**31 - 1, integer=True))
    text.check_context_length(self.context_length, name("context_length"))
    put("context_length", int(self.context_length))
    put("mean", _check_channels(name("mean"), self.mean))
    put("std", _check_channels(name("std"), self.std, positive=True))
    crop = random_resized_crop(
      self.crop_scale, self.crop_ratio, scale_field=name("crop_scale"), ratio_field=name("crop_ratio")
    )
    put("crop_scale", None if crop is None else crop.scale)
    put("crop_ratio", tuple(float(x) for x in self.crop_ratio))  # Checked even with the crop off.

  @property
  def crop(self) -> RandomResizedCrop | None:
    """The random-resized crop, or None for centre crops."""
    return None if self.crop_scale is None else RandomResizedCrop(self.crop_scale, self.crop_ratio)


def _training_stages(data, stream: TrainStream, start_step: int) -> tuple[_MakeImages, _AddText]:
  """Builds the two stages of the training iterators, after the checks that need the data."""
  data = examples_lib.as_examples(data)
  n = len(data)
  if stream.global_batch_size > n:
    raise ConfigError(f"global_batch_size={stream.global_batch_size} exceeds the split's {n} examples")
  if start_step < 0:
    raise ConfigError(f"start_step={start_step} must be >= 0")
  tokenizer = _BYTES if stream.tokenizer is None else stream.tokenizer
  tokens, caption_image_index = data.tokens(tokenizer, stream.context_length)
  plan = _StepPlan(
    caption_image_index, n, stream.global_batch_size, stream.seed, stream.process_index, stream.process_count
  )
  make_images = _MakeImages(data, plan, stream.image_size, stream.mean, stream.std, stream.num_devices, stream.crop)
  return make_images, _AddText(tokens, stream.num_devices)


def train_batches(data, stream: TrainStream, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Yields training batches forever, starting at step ``start_step``; see the module doc.

  The split's captions are encoded here, once (:meth:`examples.Examples.tokens`); a
  :class:`examples.LazyExamples` reads all its captions for that.

  Args:
    data: an ``Examples`` or a data source (see the module doc), of at least
      ``stream.global_batch_size`` examples.
    stream: what fixes the batches: their size, devices, image side, tokens, seed,
      normalisation, process share and crops.
    start_step: the step to resume at; yields what an uninterrupted iterator yields there.

  Yields:
    ``{'image': float32 [D, B/(P*D), S, S, 3], 'text': int32 [D, B/(P*D), L]}``.
  """
  make_images, add_text = _training_stages(data, stream, start_step)
  return _train_iterator(make_images, add_text, start_step)


def _train_iterator(make_images: _MakeImages, add_text: _AddText, start_step: int):
  step = start_step
  while True:
    yield add_text(make_images(step))
    step += 1


def _allow_unparsed_absl_flags() -> None:
  """Lets grain's worker processes start in a program that never parsed absl flags.

  grain 0.2.18 reads one of its absl flags when it starts workers with JAX loaded, and
  absl refuses that before the flags are parsed (google/grain#1355, fixed after 0.2.18).
  Programs run by ``absl.app`` have parsed them already; for the others (tests, notebooks)
  every flag keeps its default, as it would have anyway.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def grain_train_batches(
  data,
  stream: TrainStream,
  start_step: int = 0,
  *,
  num_workers: int = 0,
  num_threads: int = 1,
  buffer_size: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields :func:`train_batches`' batches, made by grain worker processes.

  Batch ``s`` is the same array for array as :func:`train_batches` yields at step ``s``, for
  any ``num_workers``; only where the images are read, resized and normalised changes.
  The captions are encoded once, here, in this process; the workers only send back which
  caption of the split each slot takes.

  Args:
    data, stream, start_step: as for :func:`train_batches`.
      ``data`` (without its token cache) is pickled into every worker: a
      :class:`examples.LazyExamples` sends only its data source, an in-memory split all
      its images.
    num_workers: processes that make batches; 0 makes them in this process.
    num_threads: threads per process that make batches ahead of use (Pillow's decoding
      and resizing release the GIL, so a few help even without workers); 0 makes each
      batch only when it is asked for.
    buffer_size: batches each process keeps ready ahead of use.

  Returns:
    An infinite iterator of ``{'image': float32 [D, B/(P*D), S, S, 3], 'text': int32
    [D, B/(P*D), L]}``. Call its ``close()`` when done to stop the workers at once (they
    also stop when it is garbage-collected). Workers are spawned, not forked (forking a
    process that runs JAX is unsafe), so, as for any spawning ``multiprocessing`` code, a
    script that uses workers must start from an ``if __name__ == "__main__":`` guard.
  """
  check_number("num_workers", num_workers, 0, integer=True)
  check_number("num_threads", num_threads, 0, integer=True)
  check_number("buffer_size", buffer_size, 1, integer=True)
  make_images, add_text = _training_stages(data, stream, start_step)
  # Imported here: grain pulls in JAX (about a second), and only this iterator needs it.
  import grain  # pylint: disable=g-import-not-at-top

  if num_workers:
    _allow_unparsed_absl_flags()
  # Element k of the range is step start_step + k; there is no last step.
  steps = grain.MapDataset.range(start_step, sys.maxsize).map(make_images)
  # grain's defaults (16 threads, 500 elements ahead) suit small records, not whole batches.
  batches = steps.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=buffer_size))
  # Worker w makes steps w, w + W, ...; grain interleaves them back in step order.
  batches = batches.mp_prefetch(
    grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=buffer_size),
    worker_init_fn=quiet.worker_init_fn(),  # workers hide the third-party lines the entry point hides
  )
  return iter(batches.map(add_text))


# ---------------------------------------------------------------------------- evaluation


def num_batches(count: int, batch_size: int) -> int:
  """Batches needed to cover ``count`` items, the last one padded."""
  return numerics.ceil_div(count, batch_size)


def caption_image_index(data) -> np.ndarray:
  """int32 [num_captions]: the image of each caption, in eval_text_batches' order."""
  captions = examples_lib.as_examples(data).captions()
  return np.repeat(np.arange(len(captions), dtype=np.int32), [len(c) for c in captions])


def _pad(array: np.ndarray, size: int, fill) -> np.ndarray:
  if len(array) == size:
    return array
  pad = np.full((size - len(array),) + array.shape[1:], fill, dtype=array.dtype)
  return np.concatenate([array, pad])


def eval_image_batches(
  data,
  *,
  batch_size: int,
  num_devices: int,
  image_size: int,
  mean: Sequence[float] = CLIP_MEAN,
  std: Sequence[float] = CLIP_STD,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields every image once, in index order, with its labels; see the module doc.

  Args:
    data: an ``Examples`` or a data source.
    batch_size: images per batch over all devices (b = batch_size / num_devices).
    num_devices, image_size, mean, std: as for :class:`TrainStream`.

  Yields:
    ``{'image': f32 [D, b, S, S, 3], 'mask': bool [D, b], 'index': int32 [D, b]}`` plus one
    int32 [D, b] array per label key of the dataset (e.g. 'label', or 'category' and
    'subcategory'); padded slots have mask False and index/labels -1.
  """
  data = examples_lib.as_examples(data)
  _check_batch("batch_size", batch_size, num_devices)
  labels = data.labels()
  n = len(data)
  for start in range(0, n, batch_size):
    indices = np.arange(start, min(start + batch_size, n), dtype=np.int32)
    images, _ = data.fetch(indices, image_size)
    batch = {
      "image": _pad(normalize(images, mean, std), batch_size, 0.0),
      "mask": _pad(np.ones(len(indices), dtype=bool), batch_size, False),
      "index": _pad(indices, batch_size, -1),
    }
    for key, values in labels.items():
      batch[key] = _pad(values[indices], batch_size, -1)
    yield {k: _device_split(v, num_devices) for k, v in batch.items()}


def eval_text_batches(
  data, *, batch_size: int, num_devices: int, context_length: int, tokenizer: text.Tokenizer | None = None
) -> Iterator[dict[str, np.ndarray]]:
  """Yields every caption once, image-major, with the index of its image; see the module doc.

  ``tokenizer`` encodes the captions (None is the byte tokenizer), through the split's
  token cache (:meth:`examples.Examples.tokens`), so repeated evaluations encode nothing.

  Yields:
    ``{'text': int32 [D, b, L], 'mask': bool [D, b], 'image_index': int32 [D, b],
    'caption_index': int32 [D, b]}``; 'caption_index' counts captions in this order and
    padded slots have mask False and indices -1.
  """
  data = examples_lib.as_examples(data)
  _check_batch("batch_size", batch_size, num_devices)
  text.check_context_length(context_length)
  tokens, image_index = data.tokens(_BYTES if tokenizer is None else tokenizer, context_length)
  for start in range(0, len(tokens), batch_size):
    stop = min(start + batch_size, len(tokens))
    batch = {
      # A copy: the cached tokens are read-only and shared, a batch is the caller's own.
      "text": _pad(np.array(tokens[start:stop]), batch_size, 0),
      "mask": _pad(np.ones(stop - start, dtype=bool), batch_size, False),
      "image_index": _pad(np.array(image_index[start:stop]), batch_size, -1),
      "caption_index": _pad(np.arange(start, stop, dtype=np.int32), batch_size, -1),
    }
    yield {k: _device_split(v, num_devices) for k, v in batch.items()}


# ------------------------------------------------------------------------------ prefetch

_DONE = object()


class _Failure:
  def __init__(self, error: BaseException):
    self.error = error


def prefetch(iterable: Iterable[Any], buffer_size: int = 2) -> Iterator[Any]:
  """Yields the items of ``iterable``, produced up to ``buffer_size`` ahead by a thread.

  Overlaps host batch preparation with device compute. Order is preserved and an exception
  raised by the producer is re-raised here. Closing the returned generator (or dropping
  it) stops the thread after its current item.
  """
  if buffer_size < 1:
    raise ValueError(f"buffer_size={buffer_size} must be >= 1")
  items: queue.Queue = queue.Queue(maxsize=buffer_size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterable:
        if not put(item):
          return
      put(_DONE)
    except BaseException as e:  # pylint: disable=broad-except
      put(_Failure(e))

  # A daemon thread: an infinite training iterator must not keep the process alive.
  thread = threading.Thread(target=produce, name="modgap_jax-prefetch", daemon=True)
  thread.start()

  def consume():
    try:
      while True:
        item = items.get()
        if item is _DONE:
          return
        if isinstance(item, _Failure):
          raise item.error
        yield item
    finally:
      stop.set()

  return consume()
