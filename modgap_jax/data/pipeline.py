"""Host-side NumPy batch iterators for training and evaluation.

All iterators take ``data``: an :class:`examples.Examples` (load it once with
:func:`examples.load_examples` and reuse it) or a data source from :func:`registry.load`
(read into memory on every call). Batches are laid out for ``jax.pmap``: a leading
device axis [num_devices, per_device, ...]. Images are float32 NHWC RGB, normalised as
``(x / 255 - mean) / std`` (CLIP's mean and std by default).

Training (:func:`train_batches`), infinite, one step per batch:
  {'image': f32 [D, B/D, S, S, 3], 'text': int32 [D, B/D, L]}
  (tokens from the ``tokenizer`` argument, the byte tokenizer by default)
  - epoch e visits every image at most once in the order ``permutation(seed, e)`` and
    drops the last ``n mod B`` images of that order;
  - each image gets one caption per epoch, ``captions[i][floor(u(seed, e, i) * k_i)]``
    with u uniform in [0, 1), k_i its number of captions;
  - step s is a pure function of (seed, s), so starting at ``start_step`` resumes exactly.

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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from modgap_jax.data import examples as examples_lib
from modgap_jax.data import tokenizer as tokenizer_lib
from modgap_jax.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Stream ids that keep the permutation and the caption draws of an epoch independent.
_PERMUTATION_STREAM = 0
_CAPTION_STREAM = 1

_BYTES = tokenizer_lib.ByteTokenizer()


def normalize(images: np.ndarray, mean: Sequence[float] = CLIP_MEAN,
              std: Sequence[float] = CLIP_STD) -> np.ndarray:
  """uint8 [..., 3] -> float32 ``(x / 255 - mean) / std``."""
  scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float32))
  shift = np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)
  out = np.multiply(images, scale, dtype=np.float32)  # One fused cast-and-scale pass.
  out -= shift
  return out


def _check_positive_int(field: str, value: int) -> None:
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise ConfigError(f"{field}={value!r} must be a positive integer")


def _check_batch(field: str, batch_size: int, num_devices: int) -> None:
  _check_positive_int(field, batch_size)
  _check_positive_int("num_devices", num_devices)
  if batch_size % num_devices:
    raise ConfigError(f"{field}={batch_size} is not divisible by num_devices={num_devices}")


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full batches per epoch; the remainder of each epoch is dropped."""
  return num_examples // global_batch_size


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The visiting order of ``epoch``: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch, _PERMUTATION_STREAM]).permutation(num_examples)


def epoch_caption_draws(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """float64 [n] in [0, 1): image i uses caption ``floor(u[i] * num_captions[i])`` in ``epoch``."""
  return np.random.default_rng([seed, epoch, _CAPTION_STREAM]).random(num_examples)


def _device_split(array: np.ndarray, num_devices: int) -> np.ndarray:
  return array.reshape((num_devices, array.shape[0] // num_devices) + array.shape[1:])


def train_batches(data, *, global_batch_size: int, num_devices: int, image_size: int,
                  context_length: int, seed: int, start_step: int = 0,
                  mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                  process_index: int = 0, process_count: int = 1,
                  tokenizer: tokenizer_lib.Tokenizer | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields training batches forever, starting at step ``start_step``; see the module doc.

  Args:
    data: an ``Examples`` or a data source (see the module doc).
    global_batch_size: images per step over all processes and devices.
    num_devices: local devices (the leading axis of every array).
    image_size: output side S in pixels.
    context_length: token slots L per caption.
    seed: non-negative integer; fixes every epoch's order and caption choice.
    start_step: the step to resume at; yields what an uninterrupted iterator yields there.
    mean, std: per-channel normalisation.
    process_index, process_count: for multi-host training, each process takes its
      contiguous ``1/process_count`` share of every global batch.
    tokenizer: encodes the captions; None is the byte tokenizer.

  Yields:
    ``{'image': float32 [D, B/(P*D), S, S, 3], 'text': int32 [D, B/(P*D), L]}``.
  """
  data = examples_lib.as_examples(data)
  n = len(data)
  _check_batch("global_batch_size", global_batch_size, num_devices)
  if global_batch_size % (num_devices * process_count):
    raise ConfigError(f"global_batch_size={global_batch_size} is not divisible by "
                      f"num_devices * process_count={num_devices * process_count}")
  if global_batch_size > n:
    raise ConfigError(f"global_batch_size={global_batch_size} exceeds the split's {n} examples")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"seed={seed!r} must be a non-negative integer")
  if start_step < 0:
    raise ConfigError(f"start_step={start_step} must be >= 0")
  if not 0 <= process_index < process_count:
    raise ConfigError(f"process_index={process_index} must lie in [0, process_count={process_count})")
  tokenizer_lib.check_context_length(context_length)
  return _train_iterator(data, global_batch_size, num_devices, image_size, context_length, seed,
                         start_step, mean, std, process_index, process_count,
                         _BYTES if tokenizer is None else tokenizer)


def _train_iterator(data, global_batch_size, num_devices, image_size, context_length, seed, start_step,
                    mean, std, process_index, process_count, tokenizer):
  n = len(data)
  per_epoch = steps_per_epoch(n, global_batch_size)
  per_process = global_batch_size // process_count
  cached_epoch, order, draws = None, None, None
  step = start_step
  while True:
    epoch, position = divmod(step, per_epoch)
    if epoch != cached_epoch:
      order = epoch_permutation(seed, epoch, n)
      draws = epoch_caption_draws(seed, epoch, n)
      cached_epoch = epoch
    start = position * global_batch_size + process_index * per_process
    indices = order[start:start + per_process]
    images, captions = data.fetch(indices, image_size)
    # Counted per batch, so lazy sources need not read every caption up front.
    num_captions = np.array([len(c) for c in captions])
    choice = np.floor(draws[indices] * num_captions).astype(np.int64)
    texts = [caps[c] for caps, c in zip(captions, choice)]
    yield {
        "image": _device_split(normalize(images, mean, std), num_devices),
        "text": _device_split(tokenizer.encode(texts, context_length), num_devices),
    }
    step += 1


def num_batches(count: int, batch_size: int) -> int:
  """Batches needed to cover ``count`` items, the last one padded."""
  return -(-count // batch_size)


def caption_image_index(data) -> np.ndarray:
  """int32 [num_captions]: the image of each caption, in eval_text_batches' order."""
  captions = examples_lib.as_examples(data).captions()
  return np.repeat(np.arange(len(captions), dtype=np.int32), [len(c) for c in captions])


def _pad(array: np.ndarray, size: int, fill) -> np.ndarray:
  if len(array) == size:
    return array
  pad = np.full((size - len(array),) + array.shape[1:], fill, dtype=array.dtype)
  return np.concatenate([array, pad])


def eval_image_batches(data, *, batch_size: int, num_devices: int, image_size: int,
                       mean: Sequence[float] = CLIP_MEAN,
                       std: Sequence[float] = CLIP_STD) -> Iterator[dict[str, np.ndarray]]:
  """Yields every image once, in index order, with its labels; see the module doc.

  Args:
    data: an ``Examples`` or a data source.
    batch_size: images per batch over all devices (b = batch_size / num_devices).
    num_devices, image_size, mean, std: as for :func:`train_batches`.

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


def eval_text_batches(data, *, batch_size: int, num_devices: int, context_length: int,
                      tokenizer: tokenizer_lib.Tokenizer | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields every caption once, image-major, with the index of its image; see the module doc.

  ``tokenizer`` encodes the captions; None is the byte tokenizer.

  Yields:
    ``{'text': int32 [D, b, L], 'mask': bool [D, b], 'image_index': int32 [D, b],
    'caption_index': int32 [D, b]}``; 'caption_index' counts captions in this order and
    padded slots have mask False and indices -1.
  """
  data = examples_lib.as_examples(data)
  _check_batch("batch_size", batch_size, num_devices)
  tokenizer_lib.check_context_length(context_length)
  tokenizer = _BYTES if tokenizer is None else tokenizer
  texts = [text for caps in data.captions() for text in caps]
  image_index = caption_image_index(data)
  for start in range(0, len(texts), batch_size):
    stop = min(start + batch_size, len(texts))
    batch = {
        "text": _pad(tokenizer.encode(texts[start:stop], context_length), batch_size, 0),
        "mask": _pad(np.ones(stop - start, dtype=bool), batch_size, False),
        "image_index": _pad(image_index[start:stop], batch_size, -1),
        "caption_index": _pad(np.arange(start, stop, dtype=np.int32), batch_size, -1),
    }
    yield {k: _device_split(v, num_devices) for k, v in batch.items()}
