"""The device-resident split: batches drawn on the device, checked against NumPy and SciPy."""

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from modgap_jax import data
from modgap_jax.data import resident
from modgap_jax.errors import ConfigError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def toy_split(n=40, side=6, max_captions=3, length=5, seed=0):
  """Images whose pixel (0, 0, 0) is their index; captions 'i-j' so tokens identify them."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
  images[:, 0, 0, 0] = np.arange(n)
  captions = [[f"{i}-{j}" for j in range(rng.integers(1, max_captions + 1))] for i in range(n)]
  return images, captions


class ByteLike:
  """A stand-in tokenizer: the caption's bytes, then EOT 255, padded with 0."""

  def encode(self, texts, context_length):
    out = np.zeros((len(texts), context_length), np.int32)
    for row, text in enumerate(texts):
      ids = list(text.encode())[: context_length - 1] + [255]
      out[row, : len(ids)] = ids
    return out


def decode(tokens):
  return bytes(int(t) for t in tokens if t not in (0, 255)).decode()


def test_tokenize_captions_matches_a_loop():
  _, captions = toy_split()
  tokens, counts = resident.tokenize_captions(captions, ByteLike(), 8)
  assert tokens.shape == (len(captions), 3, 8)
  for i, caps in enumerate(captions):
    assert counts[i] == len(caps)
    for j, text in enumerate(caps):
      np.testing.assert_array_equal(tokens[i, j], ByteLike().encode([text], 8)[0])
    assert not tokens[i, len(caps) :].any()


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 1.0])
def test_mismatch_pairs_is_a_derangement_of_the_chosen(fraction):
  n = 101
  source = resident.mismatch_pairs(3, n, fraction)
  moved = np.flatnonzero(source != np.arange(n))
  assert len(moved) == (round(fraction * n) if round(fraction * n) >= 2 else 0)
  # A permutation of the split: every caption set is still used exactly once.
  np.testing.assert_array_equal(np.sort(source), np.arange(n))
  np.testing.assert_array_equal(source, resident.mismatch_pairs(3, n, fraction))  # fixed by the seed


def make(n=40, batch=8, augment=1.0, mismatch=0.0):
  images, captions = toy_split(n)
  examples = data.InMemoryExamples(images, captions)
  split = resident.make_resident_split(
    examples, ByteLike(), image_size=6, context_length=8, mismatch_fraction=mismatch, seed=1
  )
  sampling = resident.Sampling(n, batch, MEAN, STD, resident.Augment(augment))
  return images, captions, split, sampling


# One compilation per Sampling (a frozen, hashable dataclass), not one per call.
_device_batch = jax.jit(resident.device_batch, static_argnames=("sampling", "axis_name"))


def host_batch(split, sampling, step, seed=0):
  return jax.device_get(_device_batch(split, resident.data_key(seed), jnp.int32(step), sampling))


def test_batches_visit_each_image_once_per_epoch_with_its_own_captions():
  images, captions, split, sampling = make(n=40, batch=8)  # 5 steps per epoch, nothing dropped
  for epoch in range(2):
    seen = []
    for step in range(5 * epoch, 5 * epoch + 5):
      batch = host_batch(split, sampling, step)
      # Undo the normalisation in float64 to recover each image, then its index.
      pixels = np.rint((batch["image"].astype(np.float64) * STD + MEAN) * 255.0)
      index = pixels[:, 0, 0, 0].astype(int)
      np.testing.assert_array_equal(pixels, images[index])
      for row, i in enumerate(index):
        assert decode(batch["text"][row]) in captions[i]
      seen.extend(index)
    assert sorted(seen) == list(range(40))


def test_normalisation_matches_float64_formula():
  images, _, split, sampling = make()
  batch = host_batch(split, sampling, 0)
  index = np.rint((batch["image"][:, 0, 0, 0] * STD[0] + MEAN[0]) * 255.0).astype(int)
  expected = (images[index].astype(np.float64) / 255.0 - MEAN) / STD
  np.testing.assert_allclose(batch["image"], expected, rtol=0, atol=2e-6)


def test_caption_choice_covers_every_caption():
  _, captions, split, sampling = make(n=40, batch=8)
  used = set()
  for step in range(0, 5 * 20):
    batch = host_batch(split, sampling, step)
    used.update(decode(t) for t in batch["text"])
  assert used == {c for caps in captions for c in caps}


def test_mismatched_images_carry_another_images_captions():
  images, captions, split, sampling = make(mismatch=0.5)
  source = resident.mismatch_pairs(1, 40, 0.5)
  batch = host_batch(split, sampling, 3)
  index = np.rint((batch["image"][:, 0, 0, 0] * STD[0] + MEAN[0]) * 255.0).astype(int)
  for row, i in enumerate(index):
    assert decode(batch["text"][row]) in captions[source[i]]


def test_four_devices_draw_the_global_batch_of_one():
  assert jax.local_device_count() == 4
  _, _, split, sampling = make(n=40, batch=8, augment=0.6)
  p_fn = jax.pmap(lambda s, k, t: resident.device_batch(s, k, t, sampling, axis_name="batch"), axis_name="batch")
  for step in (0, 7):
    sharded = jax.device_get(p_fn(*flax.jax_utils.replicate((split, resident.data_key(0), jnp.int32(step)))))
    single = host_batch(split, sampling, step)
    for key in ("image", "text"):
      np.testing.assert_array_equal(sharded[key].reshape(single[key].shape), single[key])


def test_batches_are_pure_functions_of_seed_and_step():
  _, _, split, sampling = make(augment=0.5)
  a, b = host_batch(split, sampling, 11), host_batch(split, sampling, 11)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  c = host_batch(split, sampling, 11, seed=1)
  assert not np.array_equal(a["image"], c["image"])


@pytest.mark.parametrize("crop,corner", [(1.0, (0.0, 0.0)), (0.5, (3.0, 1.5)), (0.73, (0.0, 4.2))])
def test_crop_and_resize_matches_scipy_bilinear(crop, corner):
  rng = np.random.default_rng(0)
  side = 16
  image = rng.standard_normal((side, side, 3))
  out = resident.crop_and_resize(jnp.asarray(image, jnp.float32), jnp.float32(crop), jnp.asarray(corner, jnp.float32))
  # Output pixel o reads input corner + (o + 1/2)·crop − 1/2, bilinear, edge-clamped.
  coords = np.asarray(corner)[:, None] + (np.arange(side) + 0.5) * crop - 0.5
  rows, cols = np.meshgrid(coords[0], coords[1], indexing="ij")
  expected = np.stack(
    [ndimage.map_coordinates(image[..., c], [rows, cols], order=1, mode="nearest") for c in range(3)], axis=-1
  )
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_crop_boxes_stay_inside_the_image():
  crop, corner = resident.crop_boxes(jax.random.split(jax.random.PRNGKey(0), 500), 0.4, 32)
  crop, corner = np.asarray(crop), np.asarray(corner)
  assert crop.min() >= 0.4 and crop.max() <= 1.0
  assert corner.min() >= 0.0 and (corner + 32 * crop[:, None]).max() <= 32 + 1e-4


def test_bad_settings_are_one_line_errors():
  with pytest.raises(ConfigError, match="augment_min_scale"):
    resident.Augment(0.0)
  with pytest.raises(ConfigError, match="batch_size"):
    resident.Sampling(10, 11, MEAN, STD)
  with pytest.raises(ConfigError, match="mismatch_fraction"):
    resident.mismatch_pairs(0, 10, 1.5)
