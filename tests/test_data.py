"""Tests of the offline builders and the input pipeline on built data.

Every builder is built once per session into a temporary data_dir with the network
refused. Counts are checked against independent recounts of the raw sources, and the
pipeline's order, caption choice, resumption and eval coverage are checked on examples
whose pixels and captions encode their own index.
"""

import collections
import contextlib
import dataclasses
import gzip
import hashlib
import json
import os
import re
import socket
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import modgap_jax.data as data
from modgap_jax.data import examples
from modgap_jax.data.builders import digits, fashion_mnist, twemoji, twemoji_source
from modgap_jax.errors import ConfigError

FAKE_FASHION_COUNTS = {"train": 12, "test": 5}
_TONE = "(light|medium-light|medium|medium-dark|dark) skin tone"


def _refuse(*args, **kwargs):
  raise OSError("network access is disabled in tests")


@contextlib.contextmanager
def no_network():
  """Makes every Python-level connection attempt fail (only while building, not all session)."""
  with pytest.MonkeyPatch.context() as patch:
    for name in ("connect", "connect_ex"):
      patch.setattr(socket.socket, name, _refuse)
    patch.setattr(socket, "create_connection", _refuse)
    patch.setattr(socket, "getaddrinfo", _refuse)
    yield


def _write_idx_gz(path, array: np.ndarray) -> None:
  """Writes uint8 IDX by hand: magic 0x00000803/0x00000801, big-endian sizes, data."""
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="session")
def fake_fashion_dir(tmp_path_factory):
  """A small Fashion-MNIST in the real IDX .gz format, and the arrays it holds."""
  directory = tmp_path_factory.mktemp("fashion_idx")
  rng = np.random.default_rng(1)
  arrays = {}
  for split, (image_file, label_file) in fashion_mnist.FILES.items():
    n = FAKE_FASHION_COUNTS[split]
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    _write_idx_gz(directory / image_file, images)
    _write_idx_gz(directory / label_file, labels)
    arrays[split] = (images, labels)
  return directory, arrays


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, fake_fashion_dir):
  """Builds every local dataset from scratch, offline; returns the data_dir."""
  directory = tmp_path_factory.mktemp("tfds")
  with no_network():
    # The owner's acceptance path: plain tfds.data_source once the builders are imported
    # (this module imports TFDS, then modgap_jax.data, which then registers them).
    for name in ("twemoji_captions", "digits_captions"):
      tfds.data_source(name, split="train", data_dir=str(directory))
    data.prepare("mnist5k_captions", directory)
    data.prepare("fashion_mnist_local", directory, source_dir=fake_fashion_dir[0])
  return directory


@pytest.fixture(scope="session")
def twemoji_splits(data_dir):
  return {split: data.load("twemoji_captions", split, data_dir) for split in ("train", "test")}


def _read_all(source):
  return source.__getitems__(list(range(len(source))))


# ------------------------------------------------------------------------- twemoji


def _independent_twemoji_count() -> tuple[int, int]:
  """Recounts the join from the raw files: canonical code points on both sides."""

  def canonical(code: str) -> str:
    return "-".join(p.lstrip("0") for p in code.lower().split("-") if p != "fe0f")

  files = {canonical(f[:-4]) for f in os.listdir(twemoji_source.png_dir()) if f.endswith(".png")}
  with open(twemoji_source.emoji_table_path(), encoding="utf-8") as f:
    table = json.load(f)
  bases = variants = 0
  for row in table:
    if canonical(row["unified"]) in files:
      bases += 1
      variants += sum(canonical(v["unified"]) in files for v in (row.get("skin_variations") or {}).values())
  return bases, variants


def test_twemoji_counts_match_an_independent_recount(twemoji_splits):
  bases, variants = _independent_twemoji_count()
  assert (bases, variants) == (1903, 1875)
  total = len(twemoji_splits["train"]) + len(twemoji_splits["test"])
  assert total == bases + variants == 3778


def test_twemoji_features(twemoji_splits, data_dir):
  info = data.builder("twemoji_captions", data_dir).info
  assert info.features["category"].num_classes == 10
  assert info.features["subcategory"].num_classes == 100
  assert "CC-BY 4.0" in info.citation and "CC-BY 4.0" in info.description
  example = twemoji_splits["test"][0]
  assert example["image"].shape == (72, 72, 3) and example["image"].dtype == np.uint8
  assert isinstance(example["captions"], list) and len(example["captions"]) >= 2
  assert all(isinstance(c, bytes) for c in example["captions"])
  assert 0 <= example["category"] < 10 and 0 <= example["subcategory"] < 100


def test_twemoji_images_are_composited_on_white(twemoji_splits):
  records = _read_all(twemoji_splits["test"])
  corners = np.array([r["image"][0, 0] for r in records])
  assert (corners == 255).all(axis=1).mean() > 0.9
  record = records[0]
  png = twemoji_source.png_dir() / (record["emoji_id"].decode() + ".png")
  with Image.open(png) as image:
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    reference = np.asarray(Image.alpha_composite(white, image.convert("RGBA")).convert("RGB"))
  assert np.abs(reference.astype(int) - record["image"].astype(int)).max() <= 1


def test_twemoji_split_is_by_base_emoji(twemoji_splits):
  bases = {s: {r["base_id"] for r in _read_all(src)} for s, src in twemoji_splits.items()}
  assert not bases["train"] & bases["test"]
  # Recomputes the rule: a base is train iff SHA-256("twemoji_captions/v1:" + base) < 0.8.
  for split, ids in bases.items():
    for base in ids:
      digest = hashlib.sha256(b"twemoji_captions/v1:" + base).digest()
      assert (int.from_bytes(digest[:8], "big") < 0.8 * 2**64) == (split == "train")
  num_bases = len(bases["train"]) + len(bases["test"])
  assert num_bases == 1903 and 0.77 < len(bases["train"]) / num_bases < 0.83


def test_twemoji_variants_differ_from_their_base_only_by_skin_tone(twemoji_splits):
  records = _read_all(twemoji_splits["train"]) + _read_all(twemoji_splits["test"])
  by_id = {r["emoji_id"]: r for r in records}
  variants = [r for r in records if r["emoji_id"] != r["base_id"]]
  assert len(variants) == 1875
  for variant in variants[::50]:
    base = by_id[variant["base_id"]]
    assert len(base["captions"]) == len(variant["captions"])
    assert variant["category"] == base["category"] and variant["subcategory"] == base["subcategory"]
    for b, v in zip(base["captions"], variant["captions"]):
      match = re.fullmatch(re.escape(b.decode()) + f"(: | with )({_TONE}(, {_TONE})?)", v.decode())
      assert match, (b, v)


# ---------------------------------------------------------------------- digits, mnist


def test_digits_builder_matches_sklearn(data_dir):
  from sklearn import datasets

  digits = datasets.load_digits()
  train, test = (_read_all(data.load("digits_captions", s, data_dir)) for s in ("train", "test"))
  assert (len(train), len(test)) == (1457, 340)
  images = np.stack([r["image"] for r in train + test])
  assert images.shape[1:] == (8, 8, 1) and images.dtype == np.uint8
  # Every stored image is one of sklearn's, rescaled from 0..16 to 0..255, with its label.
  reference = {np.rint(im * 255 / 16).astype(np.uint8).tobytes(): int(y) for im, y in zip(digits.images, digits.target)}
  for record in train + test:
    assert reference[record["image"][..., 0].tobytes()] == record["label"]
  assert collections.Counter(r["label"] for r in train + test) == collections.Counter(digits.target.tolist())
  words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
  for record in test[:20]:
    y = record["label"]
    assert len(record["captions"]) == 3
    assert all(words[y] in c.decode() or str(y) in c.decode() for c in record["captions"])


def test_mnist5k_builder_matches_the_csv(data_dir):
  import csv

  with gzip.open(digits.mnist5k_path(), "rt") as f:
    rows = [list(map(int, row)) for row in csv.reader(f)]
  train, test = (_read_all(data.load("mnist5k_captions", s, data_dir)) for s in ("train", "test"))
  assert (len(train), len(test)) == (3960, 1040)
  assert train[0]["image"].shape == (28, 28, 1)
  stored = collections.Counter((r["image"].tobytes(), int(r["label"])) for r in train + test)
  expected = collections.Counter((bytes(row[:-1]), row[-1]) for row in rows)
  assert stored == expected


# --------------------------------------------------------------------- fashion-mnist


def test_fashion_builder_reads_fake_idx_files(data_dir, fake_fashion_dir):
  _, arrays = fake_fashion_dir
  for split, (images, labels) in arrays.items():
    records = _read_all(data.load("fashion_mnist_local", split, data_dir))
    assert len(records) == FAKE_FASHION_COUNTS[split]
    np.testing.assert_array_equal(np.stack([r["image"][..., 0] for r in records]), images)
    np.testing.assert_array_equal([r["label"] for r in records], labels)
    assert all(len(r["captions"]) == 3 for r in records)
  info = data.builder("fashion_mnist_local", data_dir).info
  assert info.features["label"].names[9] == "Ankle boot"


def test_fashion_missing_files_error(tmp_path):
  with pytest.raises(ConfigError) as error:
    data.load("fashion_mnist_local", "train", tmp_path / "tfds", source_dir=tmp_path / "empty")
  message = str(error.value)
  assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
  assert "source_dir" in message


# ------------------------------------------------------------------- registry errors


def test_unknown_dataset_and_split_raise_config_error(tmp_path):
  with pytest.raises(ConfigError) as error:
    data.load("imagenet", "train", tmp_path)
  message = str(error.value)
  assert "\n" not in message and "dataset='imagenet'" in message
  assert all(name in message for name in data.DATASETS)
  with pytest.raises(ConfigError, match="'train', 'test'"):
    data.load("digits_captions", "validation", tmp_path)
  assert not any(tmp_path.iterdir())  # Nothing half-written.


def test_load_accepts_tfds_slicing(data_dir):
  assert len(data.load("digits_captions", "train[:10]", data_dir)) == 10


# ------------------------------------------------------------------------ zero-shot


def test_zero_shot_classes_line_up_with_labels(data_dir):
  info = data.builder("twemoji_captions", data_dir).info
  for key in data.label_keys("twemoji_captions"):
    classnames, templates = data.zero_shot_classes("twemoji_captions", key)
    names = info.features[key].names
    assert len(classnames) == len(set(classnames)) == len(names)
    assert all(c == n.lower().replace("-", " ") for c, n in zip(classnames, names))
    assert templates and all("{}" in t for t in templates)
  assert twemoji.category_names() == info.features["category"].names
  for name in ("digits_captions", "mnist5k_captions", "fashion_mnist_local"):
    classnames, templates = data.zero_shot_classes(name, "label")
    assert len(classnames) == 10 and all("{}" in t for t in templates)
  with pytest.raises(ConfigError, match="label_key"):
    data.zero_shot_classes("twemoji_captions", "label")
  with pytest.raises(ConfigError, match="no labels"):
    data.zero_shot_classes("coco_captions")


# ------------------------------------------------------------------------- pipeline


def _indexed_examples(n: int, side: int = 4) -> examples.InMemoryExamples:
  """Image i holds i in its pixels; image i has (i % 3) + 1 captions 'image i caption j'."""
  images = np.zeros((n, side, side, 3), dtype=np.uint8)
  images[:, 0, 0, 0] = np.arange(n) % 256
  images[:, 0, 0, 1] = np.arange(n) // 256
  captions = [[f"image {i} caption {j}" for j in range(i % 3 + 1)] for i in range(n)]
  return examples.InMemoryExamples(images, captions, {"label": np.arange(n) % 7})


def _decode(batch):
  """Recovers (image index, caption text) of each slot of a batch."""
  image = np.rint(batch["image"].reshape((-1,) + batch["image"].shape[2:]) * 255).astype(int)
  indices = image[:, 0, 0, 0] + 256 * image[:, 0, 0, 1]
  texts = data.detokenize(batch["text"].reshape(-1, batch["text"].shape[-1]))
  return indices, texts


_PLAIN = dict(image_size=4, context_length=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _plain(**fields):
  """A spec whose images decode to their indices (no normalisation)."""
  return data.TrainStream(**{**_PLAIN, **fields})


def test_train_batches_shapes_and_epochs():
  ds = _indexed_examples(103)
  stream = data.train_batches(ds, _plain(global_batch_size=20, num_devices=4, seed=3))
  per_epoch = data.steps_per_epoch(103, 20)
  epochs = []
  for _ in range(3):
    seen, captions = [], {}
    for _ in range(per_epoch):
      batch = next(stream)
      assert batch["image"].shape == (4, 5, 4, 4, 3) and batch["image"].dtype == np.float32
      assert batch["text"].shape == (4, 5, 32) and batch["text"].dtype == np.int32
      indices, texts = _decode(batch)
      for i, text in zip(indices, texts):
        assert text.startswith(f"image {i} caption ")  # The caption belongs to its image.
        captions[i] = text
      seen.extend(indices.tolist())
    assert len(seen) == len(set(seen)) == per_epoch * 20  # Each image at most once per epoch.
    epochs.append((seen, captions))
  assert epochs[0][0] != epochs[1][0]  # A new order each epoch.
  shared = set(epochs[0][1]) & set(epochs[1][1])
  multi = [i for i in shared if i % 3]
  assert any(epochs[0][1][i] != epochs[1][1][i] for i in multi)  # Captions re-drawn per epoch.


def test_train_batches_are_deterministic_and_resumable():
  ds = _indexed_examples(50)
  spec = _plain(global_batch_size=8, num_devices=4, seed=11)
  first = [next(it) for it in [data.train_batches(ds, spec)] for _ in range(15)]
  again = data.train_batches(ds, spec)
  for expected in first:
    got = next(again)
    for key in expected:
      np.testing.assert_array_equal(got[key], expected[key])
  for start in (4, 6, 13):  # Inside an epoch, at an epoch boundary (6 steps/epoch), later.
    resumed = next(data.train_batches(ds, spec, start_step=start))
    for key in resumed:
      np.testing.assert_array_equal(resumed[key], first[start][key])
  other = next(data.train_batches(ds, dataclasses.replace(spec, seed=12)))
  assert not np.array_equal(other["image"], first[0]["image"])


def test_train_batches_multi_process_slices_partition_the_global_batch():
  ds = _indexed_examples(64)
  whole = _decode(next(data.train_batches(ds, _plain(global_batch_size=16, num_devices=4, seed=0))))[0]
  shares = [_plain(global_batch_size=16, num_devices=2, seed=0, process_index=p, process_count=2) for p in range(2)]
  parts = [_decode(next(data.train_batches(ds, share)))[0] for share in shares]
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_train_batches_config_errors():
  ds = _indexed_examples(30)
  with pytest.raises(ConfigError, match="not divisible by num_devices=4"):
    _plain(global_batch_size=10, num_devices=4, seed=0)
  with pytest.raises(ConfigError, match="exceeds"):
    data.train_batches(ds, _plain(global_batch_size=32, num_devices=4, seed=0))
  with pytest.raises(ConfigError, match="seed"):
    _plain(global_batch_size=8, num_devices=4, seed=-1)


def test_train_stream_checks_names_and_normalises_its_fields():
  fields = dict(global_batch_size=8, num_devices=4, image_size=4, context_length=8, seed=0)
  bad = [
    ({"seed": 2**31}, "seed=2147483648"),
    ({"process_index": 1}, "process_index=1"),
    ({"image_size": 0}, "image_size=0"),
    ({"context_length": 1}, "context_length=1"),
    ({"mean": (0.5, 0.5)}, "mean="),
    ({"std": (0.0, 1.0, 1.0)}, "std="),
    ({"crop_scale": (0.0, 1.0)}, "crop_scale="),
    ({"crop_ratio": (2.0, 1.0)}, "crop_ratio="),
  ]
  for change, message in bad:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
      data.TrainStream(**{**fields, **change})
    # A caller can have the messages name its own fields (the trainer: its config's).
    names = {field: f"config.{field}" for field in change}
    with pytest.raises(ConfigError, match=f"^config\\.{re.escape(message)}"):
      data.TrainStream(**{**fields, **change}, names=names)
  with pytest.raises(TypeError, match="batch_size"):
    data.TrainStream(**fields, names={"batch_size": "batch_size"})
  # Sequences become tuples (an empty crop_scale None), numbers ints and floats.
  spec = data.TrainStream(**{**fields, "seed": np.int64(3), "mean": [0, 0, 0], "crop_scale": [], "crop_ratio": [1, 2]})
  assert spec.seed == 3 and type(spec.seed) is int
  assert spec.mean == (0.0, 0.0, 0.0) and spec.crop_scale is None and spec.crop is None
  assert spec.crop_ratio == (1.0, 2.0)
  assert dataclasses.replace(spec, crop_scale=[0.5, 1]).crop == data.random_resized_crop((0.5, 1.0), (1.0, 2.0))
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.seed = 4


def test_eval_batches_cover_every_image_and_caption_once():
  ds = _indexed_examples(45)
  seen = []
  for batch in data.eval_image_batches(ds, batch_size=16, num_devices=4, image_size=4, mean=(0, 0, 0), std=(1, 1, 1)):
    assert batch["image"].shape == (4, 4, 4, 4, 3) and batch["mask"].shape == (4, 4)
    mask = batch["mask"].reshape(-1)
    index = batch["index"].reshape(-1)
    decoded = _decode({"image": batch["image"], "text": np.zeros((1, 1, 2), np.int32)})[0]
    np.testing.assert_array_equal(decoded[mask], index[mask])  # 'index' names the image.
    np.testing.assert_array_equal(batch["label"].reshape(-1)[mask], index[mask] % 7)
    assert (index[~mask] == -1).all() and (batch["label"].reshape(-1)[~mask] == -1).all()
    seen.extend(index[mask].tolist())
  assert seen == list(range(45))
  assert data.num_batches(45, 16) == 3

  captions = []
  for batch in data.eval_text_batches(ds, batch_size=8, num_devices=4, context_length=32):
    mask = batch["mask"].reshape(-1)
    texts = data.detokenize(batch["text"].reshape(-1, 32))
    for text, image, caption in zip(
      np.array(texts)[mask], batch["image_index"].reshape(-1)[mask], batch["caption_index"].reshape(-1)[mask]
    ):
      assert text.startswith(f"image {image} caption ")
      captions.append((int(caption), text))
  expected = [t for caps in ds.captions() for t in caps]
  assert [c for c, _ in captions] == list(range(len(expected)))
  assert [t for _, t in captions] == expected
  np.testing.assert_array_equal(data.caption_image_index(ds), [int(t.split()[1]) for t in expected])


def test_pipeline_on_twemoji(data_dir):
  test = data.load_examples("twemoji_captions", "test", data_dir)
  assert set(test.label_keys) == {"subcategory", "category"}
  stream = data.TrainStream(global_batch_size=32, num_devices=4, image_size=32, context_length=48, seed=0)
  batch = next(data.train_batches(test, stream))
  assert batch["image"].shape == (4, 8, 32, 32, 3) and np.isfinite(batch["image"]).all()
  assert (np.argmax(batch["text"], axis=-1) > 0).all()
  labels = collections.Counter()
  count = 0
  for batch in data.eval_image_batches(test, batch_size=256, num_devices=4, image_size=32):
    count += int(batch["mask"].sum())
    labels.update(batch["category"][batch["mask"]].tolist())
  assert count == len(test) and sum(labels.values()) == len(test)
  num_captions = sum(
    int(b["mask"].sum()) for b in data.eval_text_batches(test, batch_size=512, num_devices=4, context_length=48)
  )
  assert num_captions == sum(len(c) for c in test.captions())


def test_pipeline_accepts_a_data_source(data_dir):
  source = data.load("digits_captions", "train[:40]", data_dir)
  stream = data.TrainStream(global_batch_size=16, num_devices=4, image_size=8, context_length=16, seed=0)
  batch = next(data.train_batches(source, stream))
  assert batch["image"].shape == (4, 4, 8, 8, 3) and batch["text"].shape == (4, 4, 16)
  # Grayscale digits become RGB with equal channels.
  np.testing.assert_allclose(
    batch["image"][..., 0] * data.CLIP_STD[0] + data.CLIP_MEAN[0],
    batch["image"][..., 2] * data.CLIP_STD[2] + data.CLIP_MEAN[2],
    atol=1e-6,
  )
  batches = list(data.eval_image_batches(source, batch_size=16, num_devices=4, image_size=8))
  assert [int(b["mask"].sum()) for b in batches] == [16, 16, 8]
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(labels, [r["label"] for r in _read_all(source)])
