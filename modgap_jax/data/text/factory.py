"""Choosing a tokenizer by name and rebuilding one from JSON; sits above both kinds.

``make_tokenizer`` makes a run's tokenizer from its config (``'byte'``, or ``'bpe'``
trained on the training captions), and ``from_json`` reads back what ``to_json()`` stored
with the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from modgap_jax.data.text import base, bpe, byte
from modgap_jax.errors import ConfigError, check_choice

TOKENIZER_KINDS = ("byte", "bpe")
# What to_json() may have stored: also CLIP's tokenizer, which a pretrained model's run uses.
JSON_KINDS = (*TOKENIZER_KINDS, "clip_bpe")


def make_tokenizer(kind: str, train_captions: Iterable[str] = (), vocab_size: int | None = None) -> base.Tokenizer:
  """Returns the tokenizer of a run: ``'byte'``, or ``'bpe'`` trained on ``train_captions``.

  Args:
    kind: 'byte' or 'bpe'.
    train_captions: the training split's captions, flat; only 'bpe' reads them.
    vocab_size: for 'bpe', the most ids the trained tokenizer may use (see
      :func:`bpe.train_bpe`); 'byte' ignores it (its size is fixed at 259).

  Returns:
    A :class:`base.Tokenizer`.
  """
  check_choice("tokenizer", kind, TOKENIZER_KINDS)
  if kind == "byte":
    return byte.ByteTokenizer()
  if vocab_size is None:
    raise ConfigError("vocab_size=None: a 'bpe' tokenizer needs a vocabulary size")
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
  if kind == "clip_bpe":
    return bpe.CLIPTokenizer.from_json(text)
  return bpe.BPETokenizer.from_json(text)
