"""The byte-level tokenizer, the default: UTF-8 bytes between SOT and EOT.

Why bytes by default: nothing has to be trained or shipped, every string (emoji names,
any language) is encodable without unknown tokens, and the ids cannot drift between runs
or datasets. The vocabulary (``VOCAB_SIZE`` = 259), laid out as :mod:`.base` describes:
  0        padding
  1..256   the UTF-8 byte b is id b + 1
  257      ``SOT_ID``, start of text
  258      ``EOT_ID``, end of text

Byte sequences are long (an emoji name such as "an emoji of kiss: woman, woman with
medium-light skin tone, medium-dark skin tone" is 80+ bytes), so a short context truncates
the words that tell captions apart; BPE trained on the training captions (:mod:`.bpe`)
packs the same text into a few tokens per word.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from modgap_jax.data.text import base

BYTE_OFFSET = 1  # Byte b is id b + 1: id 0 is padding.
SOT_ID = 257
EOT_ID = 258
VOCAB_SIZE = 259


def tokenize(texts: str | Sequence[str], context_length: int) -> np.ndarray:
  """Encodes texts as int32 [n, context_length]: SOT, bytes, EOT, then 0-padding.

  A text too long for the context is truncated so that EOT still sits in the last slot.
  A single string is treated as a batch of one.
  """
  base.check_context_length(context_length)
  if isinstance(texts, str):
    texts = [texts]
  room = context_length - 2
  # Slicing the bytes before the int32 cast keeps long texts cheap.
  bodies = (
    np.frombuffer(base.normalize(text).encode("utf-8")[:room], dtype=np.uint8).astype(np.int32) + BYTE_OFFSET
    for text in texts
  )
  return base.pack(bodies, context_length, SOT_ID, EOT_ID)


def detokenize(tokens: np.ndarray) -> list[str]:
  """Inverts :func:`tokenize` up to normalisation and truncation; int [n, L] -> n strings.

  Bytes of a UTF-8 character cut by truncation decode to U+FFFD.
  """
  texts = []
  for row in np.asarray(tokens).reshape(-1, np.shape(tokens)[-1]):
    ids = row[(row > base.PAD_ID) & (row < SOT_ID)]
    texts.append(bytes((ids - BYTE_OFFSET).astype(np.uint8).tolist()).decode("utf-8", errors="replace"))
  return texts


class ByteTokenizer:
  """The byte-level tokenizer as a :class:`base.Tokenizer` object (see the module doc)."""

  pad_id = base.PAD_ID
  sot_id = SOT_ID
  eot_id = EOT_ID
  vocab_size = VOCAB_SIZE

  def encode(self, texts: str | Sequence[str], context_length: int) -> np.ndarray:
    """int32 [n, context_length]; see :func:`tokenize`."""
    return tokenize(texts, context_length)

  def decode(self, tokens: np.ndarray) -> list[str]:
    """See :func:`detokenize`."""
    return detokenize(tokens)

  def to_json(self) -> str:
    return json.dumps({"kind": "byte"})

  def __eq__(self, other) -> bool:
    return isinstance(other, ByteTokenizer)

  def __hash__(self) -> int:
    return hash(ByteTokenizer)

  def __repr__(self) -> str:
    return "ByteTokenizer()"
