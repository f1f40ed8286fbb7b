"""Tests of the multi-worker (grain) training iterator against ``train_batches``.

Both iterators must yield the same arrays at every step, for any number of workers and
from any start step, on a real built split (digits_captions, built offline into a
temporary data_dir) read in memory and per batch (the COCO path).
"""

import dataclasses

import numpy as np
import pytest

from modgap_jax import data
from modgap_jax.errors import ConfigError

# digits_captions has 1457 training images: 22 steps per epoch at 64 images a step.
_STREAM = data.TrainStream(global_batch_size=64, num_devices=4, image_size=12, context_length=24, seed=5)
_STEPS = 25  # Past the first epoch boundary.


@pytest.fixture(scope="module")
def train_split(digits_dir):
  return data.load_examples("digits_captions", "train", digits_dir)


@pytest.fixture(scope="module")
def tokenizer(train_split):
  # BPE, so that the test also covers a tokenizer other than the default.
  return data.make_tokenizer("bpe", [c for caps in train_split.captions() for c in caps], 320)


@pytest.fixture(scope="module")
def stream(tokenizer):
  return dataclasses.replace(_STREAM, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def reference(train_split, stream):
  """train_batches' first _STEPS batches."""
  batches = data.train_batches(train_split, stream)
  return [next(batches) for _ in range(_STEPS)]


def _assert_same_batches(stream, expected):
  for step, want in enumerate(expected):
    got = next(stream)
    assert sorted(got) == ["image", "text"], step
    for key in want:
      assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, (step, key)
      np.testing.assert_array_equal(got[key], want[key], err_msg=f"step {step}, {key}")


def test_in_process_grain_equals_train_batches_and_resumes(train_split, stream, reference):
  assert reference[0]["image"].shape == (4, 16, 12, 12, 3) and reference[0]["text"].shape == (4, 16, 24)
  batches = data.grain_train_batches(train_split, stream, num_workers=0)
  _assert_same_batches(batches, reference)
  batches.close()
  for start in (3, 21):  # Inside the first epoch, and just before its boundary.
    resumed = data.grain_train_batches(train_split, stream, start, num_threads=0)
    _assert_same_batches(resumed, reference[start : start + 3])
    resumed.close()


def test_two_workers_on_a_lazy_split_equal_train_batches(digits_dir, stream, reference):
  lazy = data.load_examples("digits_captions", "train", digits_dir, in_memory=False)
  assert isinstance(lazy, data.LazyExamples)
  start = 19
  batches = data.grain_train_batches(lazy, stream, start, num_workers=2)
  try:
    _assert_same_batches(batches, reference[start:])
  finally:
    batches.close()


def test_process_shares_match_train_batches(train_split, stream):
  for process in range(2):
    share = dataclasses.replace(stream, num_devices=2, process_index=process, process_count=2)
    want = next(data.train_batches(train_split, share, start_step=7))
    batches = data.grain_train_batches(train_split, share, start_step=7)
    _assert_same_batches(batches, [want])
    batches.close()


def test_grain_config_errors(train_split):
  with pytest.raises(ConfigError, match="num_workers"):
    data.grain_train_batches(train_split, _STREAM, num_workers=-1)
  with pytest.raises(ConfigError, match="buffer_size"):
    data.grain_train_batches(train_split, _STREAM, buffer_size=0)
  with pytest.raises(ConfigError, match="exceeds"):
    data.grain_train_batches(train_split, dataclasses.replace(_STREAM, global_batch_size=2048))
