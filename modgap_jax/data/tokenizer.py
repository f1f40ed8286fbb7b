"""A byte-level tokenizer: offline, deterministic, and needs no trained vocabulary.

Why bytes and not BPE: nothing has to be trained or shipped, every string (emoji names,
any language) is encodable without unknown tokens, and the ids cannot drift between runs
or datasets. Captions here are short (a few words), so the longer sequences cost little.

Vocabulary (``vocab_size`` = 259):
  0        padding
  1..256   the UTF-8 byte b is id b + 1
  257      ``sot_id``, start of text
  258      ``eot_id``, end of text: the largest id, so that, as in CLIP, the text tower
           finds the end of each sequence with ``argmax(tokens, axis=-1)``.

Text is lower-cased and its whitespace collapsed to single spaces before encoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

pad_id = 0
_BYTE_OFFSET = 1
sot_id = 257
eot_id = 258
vocab_size = 259


def normalize(text: str) -> str:
  """Lower-cases and collapses runs of whitespace."""
  return " ".join(text.lower().split())


def tokenize(texts: str | Sequence[str], context_length: int) -> np.ndarray:
  """Encodes texts as int32 [n, context_length]: SOT, bytes, EOT, then 0-padding.

  A text too long for the context is truncated so that EOT still sits in the last slot.
  A single string is treated as a batch of one.
  """
  if context_length < 2:
    raise ValueError(f"context_length={context_length} must be >= 2 (room for SOT and EOT)")
  if isinstance(texts, str):
    texts = [texts]
  tokens = np.zeros((len(texts), context_length), dtype=np.int32)
  room = context_length - 2
  for row, text in zip(tokens, texts):
    body = np.frombuffer(normalize(text).encode("utf-8")[:room], dtype=np.uint8)
    row[0] = sot_id
    row[1:1 + len(body)] = body.astype(np.int32) + _BYTE_OFFSET
    row[1 + len(body)] = eot_id
  return tokens


def detokenize(tokens: np.ndarray) -> list[str]:
  """Inverts :func:`tokenize` up to normalisation and truncation; int [n, L] -> n strings.

  Bytes of a UTF-8 character cut by truncation decode to U+FFFD.
  """
  texts = []
  for row in np.asarray(tokens).reshape(-1, np.shape(tokens)[-1]):
    ids = row[(row > pad_id) & (row < sot_id)]
    texts.append(bytes((ids - _BYTE_OFFSET).astype(np.uint8).tolist()).decode("utf-8", errors="replace"))
  return texts
