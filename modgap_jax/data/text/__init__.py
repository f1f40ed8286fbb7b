"""Tokenizers: caption text -> int32 token ids, and back.

Modules, each importing only those above it in this list:
  ``base``     the :class:`Tokenizer` interface, the shared id layout (:func:`pack`:
               SOT, body, EOT, 0-padding; EOT is the largest id), ``normalize`` and
               ``check_context_length``;
  ``byte``     :class:`ByteTokenizer`, the default (UTF-8 bytes, 259 ids), and the
               module-level ``tokenize`` / ``detokenize`` that use it;
  ``bpe``      :class:`BPETokenizer` and :func:`train_bpe` (byte-level BPE trained on the
               training captions), and CLIP's own tokenizer on the same engine
               (:func:`load_clip_tokenizer` reads CLIP's vocabulary file);
  ``words``    :class:`WordTokenizer` (one id per word of a fixed list, e.g. the scenes
               world's vocabulary) and :func:`train_words`;
  ``factory``  ``make_tokenizer(kind, captions, vocab_size)``, ``from_json`` and
               ``TOKENIZER_KINDS``.

Nothing here imports TFDS or the dataset builders, so code that only encodes text (an
evaluation script, a prompt tool) stays light::

  from modgap_jax.data import text
  tokenizer = text.make_tokenizer("bpe", train_captions, 2048)
  tokens = tokenizer.encode(["an emoji of a cat"], 32)      # int32 [1, 32]
  assert text.from_json(tokenizer.to_json()) == tokenizer
"""

from modgap_jax.data.text.base import PAD_ID, Tokenizer, check_context_length, normalize, pack
from modgap_jax.data.text.bpe import CLIP_CONTEXT_LENGTH, BPETokenizer, CLIPTokenizer, load_clip_tokenizer, train_bpe
from modgap_jax.data.text.byte import ByteTokenizer, detokenize, tokenize
from modgap_jax.data.text.factory import TOKENIZER_KINDS, from_json, make_tokenizer
from modgap_jax.data.text.words import WordTokenizer, train_words

__all__ = [
  "PAD_ID",
  "Tokenizer",
  "check_context_length",
  "normalize",
  "pack",
  "BPETokenizer",
  "train_bpe",
  "CLIP_CONTEXT_LENGTH",
  "CLIPTokenizer",
  "load_clip_tokenizer",
  "ByteTokenizer",
  "detokenize",
  "tokenize",
  "WordTokenizer",
  "train_words",
  "TOKENIZER_KINDS",
  "from_json",
  "make_tokenizer",
]
