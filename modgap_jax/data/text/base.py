"""What every tokenizer shares: the :class:`Tokenizer` interface and the id layout.

Every tokenizer (:class:`modgap_jax.data.text.byte.ByteTokenizer`,
:class:`modgap_jax.data.text.bpe.BPETokenizer`) lays out a text of context length L the
same way (:func:`pack`)::

  [SOT, t_1, ..., t_k, EOT, 0, ..., 0]

with 0 the padding (:data:`PAD_ID`) and EOT the largest id (``vocab_size - 1``), so that,
as in CLIP, the text tower finds the end of each sequence with ``argmax(tokens, axis=-1)``.
A text too long for the context keeps its first L - 2 tokens and EOT in the last slot.
Text is lower-cased and its whitespace collapsed to single spaces (:func:`normalize`)
before encoding.

This module imports nothing but NumPy and the project's errors, so that each tokenizer
can build on it without importing the other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from modgap_jax.errors import ConfigError

PAD_ID = 0

T = TypeVar("T")


class Tokenizer(Protocol):
  """What the pipeline and the trainer need from a tokenizer.

  Implementations are hashable and compare equal when they encode alike: splits cache
  their tokens per (tokenizer, context length).
  """

  pad_id: int
  sot_id: int
  eot_id: int  # Always vocab_size - 1.
  vocab_size: int  # Every id, padding, SOT and EOT included, is below it.

  def encode(self, texts: str | Sequence[str], context_length: int) -> np.ndarray:
    """int32 [n, context_length], laid out as :func:`pack` does."""

  def decode(self, tokens: np.ndarray) -> list[str]:
    """int [n, L] -> n normalised texts (up to truncation)."""

  def to_json(self) -> str:
    """A JSON string that ``text.from_json`` turns back into an equal tokenizer."""


def read_json(text: str, kind: str, version: int, label: str, build: Callable[[dict[str, Any]], T]) -> T:
  """``build(spec)`` for the JSON object ``spec`` in ``text``, once its kind and version match.

  Every tokenizer's ``from_json`` reads its ``to_json`` this way. Text that is not JSON, not
  an object, of another kind or version, or whose fields ``build`` trips over (a missing key,
  a wrong type) raises a one-line ConfigError naming ``label``; a ConfigError that ``build``
  raises passes through as it is.
  """
  try:
    spec = json.loads(text)
    if spec.get("kind") != kind or spec.get("version") != version:
      raise ConfigError(
        f"{label} has kind={spec.get('kind')!r}, version={spec.get('version')!r}; "
        f"expected kind={kind!r}, version={version}"
      )
    return build(spec)
  except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as error:
    if isinstance(error, ConfigError):
      raise
    raise ConfigError(f"{label} is malformed: {error!r}") from None


def normalize(text: str) -> str:
  """Lower-cases and collapses runs of whitespace."""
  return " ".join(text.lower().split())


def check_context_length(context_length: int, field: str = "context_length") -> None:
  """Raises a one-line ConfigError, naming ``field``, unless the context has room for SOT and EOT."""
  if not isinstance(context_length, (int, np.integer)) or context_length < 2:
    raise ConfigError(f"{field}={context_length!r} must be an integer >= 2 (room for SOT and EOT)")


def pack(bodies: Iterable[Sequence[int] | np.ndarray], context_length: int, sot: int, eot: int) -> np.ndarray:
  """Lays token bodies out as int32 [n, context_length]: SOT, body, EOT, then 0-padding.

  A body longer than ``context_length - 2`` is cut so that EOT still sits in the last slot:
  the text tower pools at EOT, so it must survive truncation.
  """
  check_context_length(context_length)
  bodies = list(bodies)
  room = context_length - 2
  tokens = np.full((len(bodies), context_length), PAD_ID, dtype=np.int32)
  for row, body in zip(tokens, bodies):
    body = body[:room]
    row[0] = sot
    row[1 : 1 + len(body)] = body
    row[1 + len(body)] = eot
  return tokens
