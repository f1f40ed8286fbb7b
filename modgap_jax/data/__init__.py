"""Offline datasets, tokenizers (bytes, or BPE trained on captions) and the input pipeline.

Layout, one concern per place:
  ``text/``       tokenizers (``base``, ``byte``, ``bpe``, ``words``, ``factory``); imports no TFDS;
  ``builders/``   the offline TFDS builders ``twemoji_captions``, ``digits_captions``,
                  ``mnist5k_captions``, ``fashion_mnist_local``, the builders of the
                  user's files ``coco_raw`` (a COCO root) and ``image_text_folder`` (a
                  folder with ``captions.jsonl``), what they are made of, and the adapter
                  that reads TFDS's ``coco_captions``;
  ``registry``    the catalog: dataset names, splits, label keys, ``load`` / ``prepare``;
  ``paths``       where built datasets are cached;
  ``zero_shot``   class names and prompt templates of the labelled datasets;
  ``examples``    a split as the pipeline sees it (in memory, or read per batch), with its
                  captions tokenized once;
  ``pipeline``    host-side batching: train/eval iterators, the multi-worker (grain)
                  training iterator, ``prefetch``;
  ``resident``    a training split kept in device memory, batched inside the step;
  ``scenes/``     the scenes world: images and captions drawn on the devices inside the
                  step, a pure function of (seed, split, index); no files.

This package imports its modules on first use (PEP 562 ``__getattr__``): ``data.text``
alone never loads TFDS, while any name of the catalog (``data.load``, ``data.prepare``,
``data.DATASETS``, ``data.load_examples``, ...) imports the builders, which registers them
with TFDS. To call ``tfds.data_source(name, ...)`` on a builder directly, import
``modgap_jax.data.builders`` first (``import modgap_jax.data`` does it too when TFDS is
already imported, e.g. ``import tensorflow_datasets as tfds`` came first).

Typical use::

  from modgap_jax import data
  train = data.load_examples("twemoji_captions", "train")   # builds on first use
  stream = data.TrainStream(global_batch_size=256, num_devices=4, image_size=64, context_length=32, seed=0)
  for batch in data.prefetch(data.train_batches(train, stream)):
    ...  # batch['image']: f32 [4, 64, 64, 64, 3], batch['text']: int32 [4, 64, 32]

For a split decoded per batch (COCO), ``data.grain_train_batches(train, stream, num_workers=8)``
yields the same batches, made by worker processes.

The user's files, selected by ``config.dataset.name`` and ``config.dataset.path``::

  coco = data.load_examples("coco_raw", "train", path="/data/coco")   # builds once per path
  folder = data.load_examples("image_text_folder", "test", path="/data/pets", test_fraction=0.2)
  split = data.load_examples(c.name, c.train_split, data_dir, **data.file_options(c))  # c: config.dataset

The byte tokenizer is the default; for BPE trained on the training captions, pass
``tokenizer=data.make_tokenizer('bpe', [c for caps in train.captions() for c in caps], 2048)``
to ``TrainStream`` and ``eval_text_batches``, and store ``tokenizer.to_json()`` with the run
(``data.tokenizer_from_json`` reads it back).
"""

from __future__ import annotations

import importlib
import sys

# Public name -> (module under this package, attribute there).
_EXPORTS = {
  # Tokenizers.
  "TOKENIZER_KINDS": ("text", "TOKENIZER_KINDS"),
  "BPETokenizer": ("text", "BPETokenizer"),
  "ByteTokenizer": ("text", "ByteTokenizer"),
  "Tokenizer": ("text", "Tokenizer"),
  "detokenize": ("text", "detokenize"),
  "make_tokenizer": ("text", "make_tokenizer"),
  "tokenize": ("text", "tokenize"),
  "tokenizer_from_json": ("text", "from_json"),
  "train_bpe": ("text", "train_bpe"),
  "train_words": ("text", "train_words"),
  "WordTokenizer": ("text", "WordTokenizer"),
  # Catalog.
  "DATASETS": ("registry", "DATASETS"),
  "FILE_DATASETS": ("registry", "FILE_DATASETS"),
  "file_options": ("registry", "file_options"),
  "default_eval_split": ("registry", "default_eval_split"),
  "resolve_eval_split": ("registry", "resolve_eval_split"),
  "LABEL_KEYS": ("registry", "LABEL_KEYS"),
  "SPLITS": ("registry", "SPLITS"),
  "builder": ("registry", "builder"),
  "label_keys": ("registry", "label_keys"),
  "load": ("registry", "load"),
  "prepare": ("registry", "prepare"),
  "default_data_dir": ("paths", "default_data_dir"),
  "zero_shot_classes": ("zero_shot", "zero_shot_classes"),
  "TWEMOJI_ATTRIBUTION": ("builders.base", "TWEMOJI_ATTRIBUTION"),
  # Splits.
  "Examples": ("examples", "Examples"),
  "InMemoryExamples": ("examples", "InMemoryExamples"),
  "LazyExamples": ("examples", "LazyExamples"),
  "from_source": ("examples", "from_source"),
  "load_examples": ("examples", "load_examples"),
  # Pipeline.
  "CLIP_MEAN": ("pipeline", "CLIP_MEAN"),
  "CLIP_STD": ("pipeline", "CLIP_STD"),
  "caption_image_index": ("pipeline", "caption_image_index"),
  "eval_image_batches": ("pipeline", "eval_image_batches"),
  "eval_text_batches": ("pipeline", "eval_text_batches"),
  "grain_train_batches": ("pipeline", "grain_train_batches"),
  "normalize": ("pipeline", "normalize"),
  "DEFAULT_CROP_RATIO": ("pipeline", "DEFAULT_CROP_RATIO"),
  "random_resized_crop": ("pipeline", "random_resized_crop"),
  "num_batches": ("pipeline", "num_batches"),
  "prefetch": ("pipeline", "prefetch"),
  "steps_per_epoch": ("pipeline", "steps_per_epoch"),
  "train_batches": ("pipeline", "train_batches"),
  "TrainStream": ("pipeline", "TrainStream"),
}
_SUBMODULES = ("builders", "examples", "paths", "pipeline", "registry", "resident", "scenes", "text", "zero_shot")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value  # Later lookups skip this function.
    return value
  if name in _SUBMODULES:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))


if "tensorflow_datasets" in sys.modules:
  # TFDS is loaded already, so registering costs little, and it keeps working the plain
  # `import tensorflow_datasets as tfds; import modgap_jax.data; tfds.data_source(name)`.
  importlib.import_module(f"{__name__}.builders")
