"""A training split that lives on the devices, and the batches the step draws from it.

Small splits (Twemoji, digits, MNIST, Fashion-MNIST at small sizes) fit in device memory many
times over, so the trainer keeps them there and the step itself assembles its batch:

- :func:`make_resident_split` does the host work once per run: resize every image to uint8
  [N, S, S, 3], tokenize every caption once into int32 [N, K, L] (K = the most captions of
  any image; empty slots are never drawn), and optionally re-pair a fixed fraction of images
  with another image's captions (:func:`mismatch_pairs`, the paper's mechanism for a
  persistent gap: pairs that no model can match).
- :func:`device_batch` runs inside the jitted step. Step ``s`` of a run with seed ``seed``
  draws a pure function of (seed, s):

  - epoch e = s // steps_per_epoch visits the images in the order
    ``permutation(fold_in(key, e))`` and drops the last ``N mod B`` of that order;
  - image i takes caption ``floor(u_{e,i} · k_i)``, u uniform in [0, 1), k_i its count;
  - the optional augmentation (:class:`Augment`) of the image in batch slot j draws from
    ``fold_in(key, e, s, j)``.

  Each device takes its contiguous share of the global batch by ``lax.axis_index``, so the
  global batch is the same for any number of devices, and a resumed run (which restarts at
  the restored ``state.step``) sees exactly the batches an uninterrupted run sees.

Images are normalised on the device, ``(x / 255 − mean) / std``, in float32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from modgap_jax.errors import ConfigError, check_range

# Stream ids under the data key, so order, caption choice and augmentation never share draws.
_ORDER, _CAPTION, _AUGMENT = 0, 1, 2


@flax.struct.dataclass
class ResidentSplit:
  """A whole training split as device arrays.

  Attributes:
    images: uint8 [N, S, S, 3] RGB.
    tokens: int32 [N, K, L]; row i holds image i's captions in its first ``num_captions[i]``
      slots.
    num_captions: int32 [N], each ≥ 1.
  """

  images: jax.Array
  tokens: jax.Array
  num_captions: jax.Array

  @property
  def num_examples(self) -> int:
    return self.images.shape[-4]

  @property
  def nbytes(self) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in (self.images, self.tokens, self.num_captions))


@dataclasses.dataclass(frozen=True)
class Augment:
  """On-device image augmentation: a random square crop, resized back to the full side.

  The crop's side is ``scale · S`` with scale uniform in [``min_scale``, 1], placed uniformly
  inside the image, and resampled bilinearly to S × S. ``min_scale = 1`` is no augmentation.
  Colour is left alone on purpose: in emoji data colour is content ("red heart", skin tones),
  so jittering it would change what the caption says.
  """

  min_scale: float = 1.0

  def __post_init__(self):
    check_range("dataset.augment_min_scale", float(self.min_scale), 0.0, 1.0, low_inclusive=False)

  @property
  def enabled(self) -> bool:
    return self.min_scale < 1.0


@dataclasses.dataclass(frozen=True)
class Sampling:
  """What fixes a run's batches: the split size, the global batch and the normalisation."""

  num_examples: int
  global_batch_size: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  augment: Augment = Augment()

  def __post_init__(self):
    if not 0 < self.global_batch_size <= self.num_examples:
      raise ConfigError(
        f"batch_size={self.global_batch_size} must lie in [1, {self.num_examples}], the number of training examples"
      )

  @property
  def steps_per_epoch(self) -> int:
    return self.num_examples // self.global_batch_size


def check_mismatch_fraction(fraction: float) -> float:
  """The share of images trained with another image's captions must lie in [0, 1]."""
  return check_range("dataset.mismatch_fraction", float(fraction), 0.0, 1.0)


def mismatch_pairs(seed: int, num_examples: int, fraction: float) -> np.ndarray:
  """int [N]: whose captions each image is trained with; a ``fraction`` of images get another's.

  The chosen images (a seeded random ``round(fraction · N)`` of them) are re-paired by a
  random derangement among themselves, so every chosen image gets a caption set that is not
  its own, and the set of captions in the split is unchanged. Fixed for the whole run: like
  a noisy web pair, a mismatched image is always shown with the same wrong captions.
  """
  check_mismatch_fraction(fraction)
  source = np.arange(num_examples)
  count = int(round(fraction * num_examples))
  if count < 2:
    return source
  rng = np.random.default_rng([seed, 0x5EED, 7])
  chosen = rng.choice(num_examples, size=count, replace=False)
  # A cyclic shift of a random order is a derangement: nobody keeps their own captions.
  order = rng.permutation(chosen)
  source[order] = np.roll(order, 1)
  return source


def tokenize_captions(
  captions: Sequence[Sequence[str]], tokenizer, context_length: int
) -> tuple[np.ndarray, np.ndarray]:
  """Every caption encoded once: (int32 [N, K, L] padded with 0, int32 [N] caption counts)."""
  counts = np.array([len(c) for c in captions], dtype=np.int32)
  if counts.min(initial=1) < 1:
    raise ValueError("every image needs at least one caption")
  flat = tokenizer.encode([text for caps in captions for text in caps], context_length)
  tokens = np.zeros((len(captions), int(counts.max(initial=1)), context_length), np.int32)
  image = np.repeat(np.arange(len(captions)), counts)
  slot = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
  tokens[image, slot] = flat
  return tokens, counts


def make_resident_split(
  examples, tokenizer, *, image_size: int, context_length: int, seed: int = 0, mismatch_fraction: float = 0.0
) -> ResidentSplit:
  """Host arrays of a whole split (``flax.jax_utils.replicate`` puts them on every device).

  Args:
    examples: an in-memory ``data.Examples`` split.
    tokenizer: encodes the captions (``encode(texts, context_length)``).
    image_size: side S of the stored images.
    context_length: token slots L.
    seed: the run's seed, which fixes the mismatched pairs.
    mismatch_fraction: share of images trained with another image's captions.
  """
  n = len(examples)
  images, _ = examples.fetch(np.arange(n), image_size)
  captions = examples.captions()
  source = mismatch_pairs(seed, n, mismatch_fraction)
  tokens, counts = tokenize_captions([captions[j] for j in source], tokenizer, context_length)
  return ResidentSplit(images=np.ascontiguousarray(images, dtype=np.uint8), tokens=tokens, num_captions=counts)


def data_key(seed: int) -> jax.Array:
  """The key every batch of a run is drawn from; independent of the model's init and swaps."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), 0xDA7A)


def crop_boxes(keys: jax.Array, min_scale: float, side: int) -> tuple[jax.Array, jax.Array]:
  """One random square crop per key: (side fraction [b] in [min_scale, 1], corner [b, 2] in px)."""

  def one(key):
    scale_key, shift_key = jax.random.split(key)
    crop = jax.random.uniform(scale_key, (), minval=min_scale, maxval=1.0)
    return crop, jax.random.uniform(shift_key, (2,)) * (1.0 - crop) * side

  return jax.vmap(one)(keys)


def crop_and_resize(image: jax.Array, crop: jax.Array, corner: jax.Array) -> jax.Array:
  """The square of side ``crop · S`` at ``corner`` (row, col) of image [S, S, C], resampled to S × S.

  Bilinear, with pixel centres at half-integers: output pixel o reads the input at
  ``corner + (o + 1/2) · crop − 1/2``, clamped to the image at its border.
  """
  zoom = 1.0 / crop
  # scale_and_translate reads input (o + 1/2 − t) / zoom − 1/2, so t = −corner · zoom.
  return jax.image.scale_and_translate(
    image, image.shape, (0, 1), jnp.stack([zoom, zoom]), -corner * zoom, method="linear", antialias=False
  )


def device_batch(
  split: ResidentSplit, key: jax.Array, step: jax.Array, sampling: Sampling, *, axis_name: str | None = None
) -> dict[str, jax.Array]:
  """This device's share of global batch ``step``: float32 images and int32 tokens.

  Call it inside the jitted (and, with ``axis_name``, pmapped) step. Returns
  ``{'image': f32 [B/D, S, S, 3], 'text': int32 [B/D, L]}`` for D devices on ``axis_name``.
  """
  batch_size = sampling.global_batch_size
  epoch, position = jnp.divmod(step, sampling.steps_per_epoch)
  epoch_key = jax.random.fold_in(key, epoch)
  order = jax.random.permutation(jax.random.fold_in(epoch_key, _ORDER), sampling.num_examples)
  # Global positions of this device's rows in the batch: the same rows, draws and crops
  # whatever the number of devices.
  local = batch_size if axis_name is None else batch_size // lax.psum(1, axis_name)
  first = 0 if axis_name is None else lax.axis_index(axis_name) * local
  slots = first + jnp.arange(local)
  indices = order[position * batch_size + slots]
  draws = jax.random.uniform(jax.random.fold_in(epoch_key, _CAPTION), (sampling.num_examples,))
  counts = split.num_captions[indices]
  choice = jnp.minimum(jnp.floor(draws[indices] * counts).astype(jnp.int32), counts - 1)
  tokens = split.tokens[indices, choice]
  images = split.images[indices].astype(jnp.float32)
  if sampling.augment.enabled:
    step_key = jax.random.fold_in(jax.random.fold_in(epoch_key, _AUGMENT), step)
    keys = jax.vmap(lambda slot: jax.random.fold_in(step_key, slot))(slots)
    crop, corner = crop_boxes(keys, sampling.augment.min_scale, images.shape[1])
    images = jax.vmap(crop_and_resize)(images, crop, corner)
  mean = jnp.asarray(sampling.mean, jnp.float32)
  std = jnp.asarray(sampling.std, jnp.float32)
  return {"image": (images / 255.0 - mean) / std, "text": tokens}
