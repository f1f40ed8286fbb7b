"""Choosing a tokenizer by name and rebuilding one from JSON; sits above every kind.

``make_tokenizer`` makes a run's tokenizer from its config (``'byte'``, ``'bpe'`` trained
on the training captions, or ``'words'``, the training captions' word list), and
``from_json`` reads back what ``to_json()`` stored with the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from modgap_jax.data.text import base, bpe, byte, words
from modgap_jax.errors import ConfigError, check_choice

TOKENIZER_KINDS = ("byte", "bpe", "words")
# What to_json() may have stored: also CLIP's tokenizer, which a pretrained model's run uses.
JSON_KINDS = (*TOKENIZER_KINDS, "clip_bpe")


def make_tokenizer(kind: str, train_captions: Iterable[str] = (), vocab_size: int | None = None) -> base.Tokenizer:
  """Returns the tokenizer of a run: ``'byte'``, or ``'bpe'`` / ``'words'`` made from ``train_captions``.

  Args:
    kind: 'byte', 'bpe' or 'words'.
    train_captions: the training split's captions, flat; 'bpe' and 'words' read them.
    vocab_size: for 'bpe' and 'words', the most ids the tokenizer may use (see
      :func:`bpe.train_bpe` and :func:`words.train_words`); 'byte' ignores it (its size
      is fixed at 259).

  Returns:
    A :class:`base.Tokenizer`.
  """
  check_choice("tokenizer", kind, TOKENIZER_KINDS)
  if kind == "byte":
    return byte.ByteTokenizer()
  if vocab_size is None:
    raise ConfigError(f"vocab_size=None: a {kind!r} tokenizer needs a vocabulary size")
  if kind == "words":
    return words.train_words(train_captions, vocab_size)
  return bpe.train_bpe(train_captions, vocab_size)


def from_json(text: str) -> base.Tokenizer:
  """Rebuilds a tokenizer from its ``to_json()`` string (any of ``JSON_KINDS``)."""
  try:
    kind = json.loads(text).get("kind")
  except (json.JSONDecodeError, AttributeError, TypeError) as error:
    raise ConfigError(f"tokenizer JSON is not a JSON object: {error}") from None
  check_choice("tokenizer JSON 'kind'", kind, JSON_KINDS)
  if kind == "byte":
    return byte.ByteTokenizer()
  if kind == "words":
    return words.WordTokenizer.from_json(text)
  if kind == "clip_bpe":
    return bpe.CLIPTokenizer.from_json(text)
  return bpe.BPETokenizer.from_json(text)
