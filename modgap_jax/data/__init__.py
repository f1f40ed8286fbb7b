"""Offline datasets, tokenizers (bytes, or BPE trained on captions) and the input pipeline.

Importing this package registers the TFDS builders ``twemoji_captions``,
``digits_captions``, ``mnist5k_captions`` and ``fashion_mnist_local``, so that
``tfds.data_source(name, split=..., data_dir=...)`` builds them (offline) on first use.
``coco_captions`` is TFDS's own catalog entry, read when the user has prepared it.

Typical use::

  from modgap_jax import data
  train = data.load_examples("twemoji_captions", "train")   # builds on first use
  for batch in data.prefetch(data.train_batches(train, global_batch_size=256, num_devices=4,
                                                image_size=64, context_length=32, seed=0)):
    ...  # batch['image']: f32 [4, 64, 64, 64, 3], batch['text']: int32 [4, 64, 32]

The byte tokenizer is the default; for BPE trained on the training captions, pass
``tokenizer=data.make_tokenizer('bpe', [c for caps in train.captions() for c in caps], 2048)``
to ``train_batches`` and ``eval_text_batches``, and store ``tokenizer.to_json()`` with the run
(``data.tokenizer_from_json`` reads it back).

Modules: ``registry`` (names, ``load``), ``examples`` (a split in memory),
``pipeline`` (train/eval iterators), ``tokenizer`` (bytes, ``make_tokenizer``), ``bpe``,
``prefetch``, ``zero_shot``, and one module per builder (``twemoji``, ``digits``,
``fashion_mnist``; ``coco`` adapts COCO).
"""

from modgap_jax.data import bpe
from modgap_jax.data import tokenizer
from modgap_jax.data.bpe import BPETokenizer
from modgap_jax.data.bpe import train_bpe
from modgap_jax.data.builder_base import TWEMOJI_ATTRIBUTION
from modgap_jax.data.examples import Examples
from modgap_jax.data.examples import InMemoryExamples
from modgap_jax.data.examples import LazyExamples
from modgap_jax.data.examples import from_source
from modgap_jax.data.examples import load_examples
from modgap_jax.data.paths import default_data_dir
from modgap_jax.data.pipeline import CLIP_MEAN
from modgap_jax.data.pipeline import CLIP_STD
from modgap_jax.data.pipeline import caption_image_index
from modgap_jax.data.pipeline import eval_image_batches
from modgap_jax.data.pipeline import eval_text_batches
from modgap_jax.data.pipeline import normalize
from modgap_jax.data.pipeline import num_batches
from modgap_jax.data.pipeline import steps_per_epoch
from modgap_jax.data.pipeline import train_batches
from modgap_jax.data.prefetch import prefetch
from modgap_jax.data.prefetch import prefetch_to_devices
from modgap_jax.data.registry import DATASETS
from modgap_jax.data.registry import LABEL_KEYS
from modgap_jax.data.registry import SPLITS
from modgap_jax.data.registry import builder
from modgap_jax.data.registry import label_keys
from modgap_jax.data.registry import load
from modgap_jax.data.registry import prepare
from modgap_jax.data.tokenizer import TOKENIZER_KINDS
from modgap_jax.data.tokenizer import ByteTokenizer
from modgap_jax.data.tokenizer import Tokenizer
from modgap_jax.data.tokenizer import detokenize
from modgap_jax.data.tokenizer import from_json as tokenizer_from_json
from modgap_jax.data.tokenizer import make_tokenizer
from modgap_jax.data.tokenizer import tokenize
from modgap_jax.data.zero_shot import zero_shot_classes
