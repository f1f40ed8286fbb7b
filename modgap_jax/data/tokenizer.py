"""Tokenizers: the byte-level default, the shared id layout, and ``make_tokenizer``.

Every tokenizer (:class:`ByteTokenizer` here, :class:`modgap_jax.data.bpe.BPETokenizer`)
has the interface of :class:`Tokenizer` and lays out a text of context length L the same
way (:func:`pack`)::

  [SOT, t_1, ..., t_k, EOT, 0, ..., 0]

with 0 the padding and EOT the largest id (``vocab_size - 1``), so that, as in CLIP, the
text tower finds the end of each sequence with ``argmax(tokens, axis=-1)``. A text too long
for the context keeps its first L - 2 tokens and EOT in the last slot. Text is lower-cased
and its whitespace collapsed to single spaces (:func:`normalize`) before encoding.

Why bytes by default: nothing has to be trained or shipped, every string (emoji names,
any language) is encodable without unknown tokens, and the ids cannot drift between runs
or datasets. The byte vocabulary (``vocab_size`` = 259):
  0        padding
  1..256   the UTF-8 byte b is id b + 1
  257      ``sot_id``, start of text
  258      ``eot_id``, end of text

Byte sequences are long (an emoji name such as "an emoji of kiss: woman, woman with
medium-light skin tone, medium-dark skin tone" is 80+ bytes), so a short context truncates
the words that tell captions apart; BPE trained on the training captions (``bpe.py``)
packs the same text into a few tokens per word.

The module-level ``tokenize``, ``detokenize``, ``vocab_size``, ``sot_id`` and ``eot_id``
are the byte tokenizer's, kept for existing callers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from modgap_jax.errors import ConfigError, check_choice

pad_id = 0
_BYTE_OFFSET = 1
sot_id = 257
eot_id = 258
vocab_size = 259

TOKENIZER_KINDS = ("byte", "bpe")


class Tokenizer(Protocol):
  """What the pipeline and the trainer need from a tokenizer."""

  pad_id: int
  sot_id: int
  eot_id: int  # Always vocab_size - 1.
  vocab_size: int  # Every id, padding, SOT and EOT included, is below it.

  def encode(self, texts: str | Sequence[str], context_length: int) -> np.ndarray:
    """int32 [n, context_length], laid out as :func:`pack` does."""

  def decode(self, tokens: np.ndarray) -> list[str]:
    """int [n, L] -> n normalised texts (up to truncation)."""

  def to_json(self) -> str:
    """A JSON string that :func:`from_json` turns back into an equal tokenizer."""


def normalize(text: str) -> str:
  """Lower-cases and collapses runs of whitespace."""
  return " ".join(text.lower().split())


def check_context_length(context_length: int) -> None:
  """Raises a one-line ConfigError unless the context has room for SOT and EOT."""
  if not isinstance(context_length, (int, np.integer)) or context_length < 2:
    raise ConfigError(f"context_length={context_length!r} must be an integer >= 2 (room for SOT and EOT)")


def pack(bodies: Iterable[Sequence[int] | np.ndarray], context_length: int, sot: int,
         eot: int) -> np.ndarray:
  """Lays token bodies out as int32 [n, context_length]: SOT, body, EOT, then 0-padding.

  A body longer than ``context_length - 2`` is cut so that EOT still sits in the last slot:
  the text tower pools at EOT, so it must survive truncation.
  """
  check_context_length(context_length)
  bodies = list(bodies)
  room = context_length - 2
  tokens = np.zeros((len(bodies), context_length), dtype=np.int32)
  for row, body in zip(tokens, bodies):
    body = body[:room]
    row[0] = sot
    row[1:1 + len(body)] = body
    row[1 + len(body)] = eot
  return tokens


def tokenize(texts: str | Sequence[str], context_length: int) -> np.ndarray:
  """Encodes texts as int32 [n, context_length]: SOT, bytes, EOT, then 0-padding.

  A text too long for the context is truncated so that EOT still sits in the last slot.
  A single string is treated as a batch of one.
  """
  check_context_length(context_length)
  if isinstance(texts, str):
    texts = [texts]
  room = context_length - 2
  # Slicing the bytes before the int32 cast keeps long texts cheap.
  bodies = (np.frombuffer(normalize(text).encode("utf-8")[:room], dtype=np.uint8).astype(np.int32)
            + _BYTE_OFFSET for text in texts)
  return pack(bodies, context_length, sot_id, eot_id)


def detokenize(tokens: np.ndarray) -> list[str]:
  """Inverts :func:`tokenize` up to normalisation and truncation; int [n, L] -> n strings.

  Bytes of a UTF-8 character cut by truncation decode to U+FFFD.
  """
  texts = []
  for row in np.asarray(tokens).reshape(-1, np.shape(tokens)[-1]):
    ids = row[(row > pad_id) & (row < sot_id)]
    texts.append(bytes((ids - _BYTE_OFFSET).astype(np.uint8).tolist()).decode("utf-8", errors="replace"))
  return texts


class ByteTokenizer:
  """The byte-level tokenizer as a :class:`Tokenizer` object (see the module doc)."""

  pad_id = pad_id
  sot_id = sot_id
  eot_id = eot_id
  vocab_size = vocab_size

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


def make_tokenizer(kind: str, train_captions: Iterable[str] = (), vocab_size: int | None = None) -> Tokenizer:
  """Returns the tokenizer of a run: ``'byte'``, or ``'bpe'`` trained on ``train_captions``.

  Args:
    kind: 'byte' or 'bpe'.
    train_captions: the training split's captions, flat; only 'bpe' reads them.
    vocab_size: for 'bpe', the most ids the trained tokenizer may use (see
      :func:`modgap_jax.data.bpe.train_bpe`); 'byte' ignores it (its size is fixed at 259).
  """
  check_choice("tokenizer", kind, TOKENIZER_KINDS)
  if kind == "byte":
    return ByteTokenizer()
  from modgap_jax.data import bpe  # Here, not at the top: bpe builds on this module.
  if vocab_size is None:
    raise ConfigError("vocab_size=None: a 'bpe' tokenizer needs a vocabulary size")
  return bpe.train_bpe(train_captions, vocab_size)


def from_json(text: str) -> Tokenizer:
  """Rebuilds a tokenizer from its ``to_json()`` string (either kind)."""
  try:
    kind = json.loads(text).get("kind")
  except (json.JSONDecodeError, AttributeError, TypeError) as error:
    raise ConfigError(f"tokenizer JSON is not a JSON object: {error}") from None
  check_choice("tokenizer JSON 'kind'", kind, TOKENIZER_KINDS)
  if kind == "byte":
    return ByteTokenizer()
  from modgap_jax.data import bpe  # Here, not at the top: bpe builds on this module.
  return bpe.BPETokenizer.from_json(text)
