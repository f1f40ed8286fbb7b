"""A word-level tokenizer over a fixed word list: one id per word, one for any unknown word.

Why: a closed synthetic language (the scenes world's captions, :mod:`modgap_jax.data.scenes`)
has a few dozen words, so one id per word is the shortest encoding, and the ids can be made
on the device from tables without any host tokenizer. This class encodes host strings to the
same ids, so strings, zero-shot prompts and device tokens agree.

Pre-tokenisation: the normalised text (:func:`.base.normalize`) is cut into pieces, each a
run of ``\\w`` characters or any other single non-space character (so "shape." is "shape"
then "."). A piece in the word list gets its id, any other piece :data:`UNK_ID`.

Ids, laid out as :mod:`.base` describes::

  0                     padding
  1                     UNK_ID, any piece not in the word list
  2 + k                 the k-th word of the list
  vocab_size - 2        SOT
  vocab_size - 1        EOT, the largest id

so ``vocab_size = len(words) + 4``. :meth:`WordTokenizer.decode` joins the words with single
spaces and writes an unknown piece as ``<unk>``; it inverts :meth:`WordTokenizer.encode` on
texts whose pieces are all known words separated by spaces.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from modgap_jax.data.text import base
from modgap_jax.errors import ConfigError

UNK_ID = 1
FIRST_WORD_ID = 2
UNKNOWN = "<unk>"
MIN_VOCAB_SIZE = FIRST_WORD_ID + 3  # Padding, UNK, one word, SOT, EOT.
_JSON_KIND = "words"
_JSON_VERSION = 1
_PIECE = re.compile(r"\w+|[^\w\s]")


def pieces(text: str) -> list[str]:
  """The pieces of normalised ``text``: runs of word characters, and single other characters."""
  return _PIECE.findall(base.normalize(text))


def check_vocab_size(vocab_size: int, field: str = "vocab_size") -> None:
  """Raises a one-line ConfigError, naming ``field``, unless there is room for one word."""
  if not isinstance(vocab_size, (int, np.integer)) or vocab_size < MIN_VOCAB_SIZE:
    raise ConfigError(f"{field}={vocab_size!r} must be an integer >= {MIN_VOCAB_SIZE} (padding, UNK, SOT, EOT, a word)")


def train_words(texts: str | Iterable[str], vocab_size: int) -> WordTokenizer:
  """The word list of ``texts``: the ``vocab_size - 4`` most frequent pieces, sorted.

  Ties in frequency go to the alphabetically first piece, and the kept words are sorted, so
  the ids depend only on the multiset of texts, not on their order.
  """
  check_vocab_size(vocab_size)
  if isinstance(texts, str):
    texts = [texts]
  counts = Counter(piece for text in texts for piece in pieces(text))
  if not counts:
    raise ConfigError("a 'words' tokenizer needs training captions with at least one word")
  ranked = sorted(counts, key=lambda word: (-counts[word], word))
  return WordTokenizer(sorted(ranked[: vocab_size - MIN_VOCAB_SIZE + 1]))


class WordTokenizer:
  """Encodes and decodes with a fixed word list; see the module doc for the ids.

  Attributes:
    words: the word list; word k has id ``2 + k``.
    vocab_size: ``len(words) + 4``.
    pad_id, unk_id, sot_id, eot_id: 0, 1, ``vocab_size - 2`` and ``vocab_size - 1``.
  """

  pad_id = base.PAD_ID
  unk_id = UNK_ID

  def __init__(self, words: Iterable[str]):
    self.words = tuple(words)
    if not self.words:
      raise ConfigError("a WordTokenizer needs at least one word")
    for word in self.words:
      if not isinstance(word, str) or pieces(word) != [word]:
        raise ConfigError(f"WordTokenizer word {word!r} is not one lower-case piece (a run of \\w, or one symbol)")
    if len(set(self.words)) != len(self.words):
      repeated = sorted(w for w, c in Counter(self.words).items() if c > 1)
      raise ConfigError(f"WordTokenizer words repeat: {repeated}")
    self._ids = {word: FIRST_WORD_ID + k for k, word in enumerate(self.words)}
    self.vocab_size = len(self.words) + MIN_VOCAB_SIZE - 1
    self.sot_id = self.vocab_size - 2
    self.eot_id = self.vocab_size - 1

  def id_of(self, word: str) -> int:
    """The id of one word (UNK_ID if it is not in the list)."""
    return self._ids.get(word, UNK_ID)

  def encode_text(self, text: str) -> list[int]:
    """One text -> its ids, without SOT, EOT, padding or truncation."""
    return [self._ids.get(piece, UNK_ID) for piece in pieces(text)]

  def encode(self, texts: str | Sequence[str], context_length: int) -> np.ndarray:
    """int32 [n, context_length]: SOT, word ids, EOT, then 0-padding (:func:`.base.pack`)."""
    base.check_context_length(context_length)
    if isinstance(texts, str):
      texts = [texts]
    return base.pack((self.encode_text(text) for text in texts), context_length, self.sot_id, self.eot_id)

  def decode(self, tokens: np.ndarray) -> list[str]:
    """int [n, L] -> n texts: the words joined by spaces; padding, SOT and EOT dropped."""
    names = (UNKNOWN,) + self.words
    texts = []
    for row in np.asarray(tokens).reshape(-1, np.shape(tokens)[-1]):
      ids = row[(row > self.pad_id) & (row < self.sot_id)]
      texts.append(" ".join(names[i - UNK_ID] for i in ids.tolist()))
    return texts

  def to_json(self) -> str:
    """The word list as JSON; :meth:`from_json` (or ``text.from_json``) reads it back."""
    return json.dumps({"kind": _JSON_KIND, "version": _JSON_VERSION, "words": list(self.words)})

  @classmethod
  def from_json(cls, text: str) -> WordTokenizer:
    """Rebuilds a tokenizer from :meth:`to_json`; a one-line ConfigError if it is not one."""

    def word_list(spec: dict) -> list:
      words = spec["words"]
      if not isinstance(words, list):
        raise ConfigError(f"words JSON 'words' is a {type(words).__name__}, not a list")
      return words

    # The constructor runs outside read_json, so its errors reach the caller as they are.
    return cls(base.read_json(text, _JSON_KIND, _JSON_VERSION, "words JSON", word_list))

  def __eq__(self, other) -> bool:
    return isinstance(other, WordTokenizer) and self.words == other.words

  def __hash__(self) -> int:
    return hash((WordTokenizer, self.words))

  def __repr__(self) -> str:
    return f"WordTokenizer(vocab_size={self.vocab_size})"
