"""Byte-level BPE trained on the training captions: deterministic, offline, never fails.

Why: byte sequences spend a short context on spelling (:mod:`.byte`), and a small text
Transformer learns words slowly from bytes. BPE merges frequent byte runs into single
tokens, so a caption takes a few tokens per word, and any string can still be encoded
because the 256 bytes stay in the vocabulary.

Pre-tokenisation. A text is normalised as by the byte tokenizer (lower case, whitespace
collapsed) and split into pieces; merges never cross a piece:
  - a word, a run of ``\\w`` characters, is its UTF-8 bytes followed by an end-of-word
    symbol ``</w>``. So "man</w>" (the word "man", or the end of "woman") differs from
    the "man" that starts "manual", and a word is the same token sequence whether a
    space or punctuation follows it ("kiss" in "kiss:" and in "kiss me");
  - any other character is a piece of its own with the spaces next to it, as bytes and
    no ``</w>`` (": " in "kiss: woman", "-" in "medium-light").
The spaces between two words are implied by the two ``</w>``, and the others are kept in
the punctuation pieces, so :meth:`BPETokenizer.decode` restores the normalised text
exactly.

Symbols: 0..255 are the bytes, 256 is ``</w>``, and 257 + k is the k-th merge.

Training (:func:`train_bpe`) starts from those 257 symbols and repeatedly merges the
adjacent pair with the largest count, counted over the distinct pieces weighted by how
often each occurs; ties go to the smallest pair of symbol ids. It stops at the requested
vocabulary size or when no pair occurs twice. Only the order of merges is learned, and it
depends only on the multiset of captions, not on their order.

Ids: 0 is padding, symbol s is id s + 1 (so bytes keep the byte tokenizer's ids 1..256 and
``</w>`` is 257), then SOT = ``vocab_size - 2`` and EOT = ``vocab_size - 1``, the largest
id, for the text tower's argmax pooling. ``vocab_size = 260 + len(merges)``.

Encoding applies the merges in the order they were learned (lowest rank first, every
occurrence of the pair, left to right), which reproduces the segmentation training reached
on every training piece; each piece's result is cached.
"""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from modgap_jax.data.text import base
from modgap_jax.errors import ConfigError

END_OF_WORD = 256
FIRST_MERGE = 257
_ID_OFFSET = 1  # Id 0 is padding.
MIN_VOCAB_SIZE = FIRST_MERGE + _ID_OFFSET + 2  # Padding, 257 symbols, SOT, EOT: no merges.
_JSON_KIND = "bpe"
_JSON_VERSION = 1

# Group 1: a word. Group 2: one other non-space character with the spaces around it.
# Normalised text has single spaces only, so every space either separates two words
# (implied by </w>) or is taken by the punctuation piece next to it.
_PIECE = re.compile(r"(\w+)|( ?[^\w\s] ?)")
_WORD_START = re.compile(r"\w")
# Distinct pieces kept by an encoder; far above the distinct words of a caption dataset.
_CACHE_LIMIT = 1 << 18


def _pieces(text: str) -> list[tuple[int, ...]]:
  """Normalised text -> its pieces as tuples of base symbols (see the module doc)."""
  pieces = []
  for word, other in _PIECE.findall(base.normalize(text)):
    if word:
      pieces.append(tuple(word.encode("utf-8")) + (END_OF_WORD,))
    else:
      pieces.append(tuple(other.encode("utf-8")))
  return pieces


def _merge_pair(symbols: Sequence[int], pair: tuple[int, int], new: int) -> list[int]:
  """Replaces every occurrence of ``pair``, scanning left to right, by ``new``."""
  first, second = pair
  out = []
  i, n = 0, len(symbols)
  while i < n:
    if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
      out.append(new)
      i += 2
    else:
      out.append(symbols[i])
      i += 1
  return out


def check_vocab_size(vocab_size: int, field: str = "vocab_size") -> None:
  """Raises a one-line ConfigError, naming ``field``, unless BPE's fixed ids fit in ``vocab_size``."""
  if not isinstance(vocab_size, (int, np.integer)) or vocab_size < MIN_VOCAB_SIZE:
    raise ConfigError(
      f"{field}={vocab_size!r} must be an integer >= {MIN_VOCAB_SIZE} (padding, 256 bytes, end-of-word, SOT and EOT)"
    )


def train_bpe(texts: str | Iterable[str], vocab_size: int) -> BPETokenizer:
  """Learns merges on ``texts`` until ``vocab_size`` ids or no pair occurs twice.

  Args:
    texts: the training captions (a single string counts as one caption).
    vocab_size: the most ids the tokenizer may use, padding, SOT and EOT included; at
      least 260. The result has fewer when the captions run out of repeated pairs.

  Returns:
    A :class:`BPETokenizer` with ``vocab_size <= vocab_size``.
  """
  check_vocab_size(vocab_size)
  if isinstance(texts, str):
    texts = [texts]
  piece_counts = Counter(piece for text in texts for piece in _pieces(text))
  # Sorted, so that the work below does not depend on the order of the captions.
  words = [list(piece) for piece in sorted(piece_counts)]
  counts = [piece_counts[piece] for piece in sorted(piece_counts)]

  # Pair counts are updated only for the pieces a merge touches, and a heap of
  # (-count, pair) finds the next merge; entries whose count went stale are skipped.
  pair_counts: dict[tuple[int, int], int] = defaultdict(int)
  holders: dict[tuple[int, int], set[int]] = defaultdict(set)  # Pieces holding a pair.
  for index, (symbols, count) in enumerate(zip(words, counts)):
    for pair in zip(symbols, symbols[1:]):
      pair_counts[pair] += count
      holders[pair].add(index)
  heap = [(-count, pair) for pair, count in pair_counts.items()]
  heapq.heapify(heap)

  merges: list[tuple[int, int]] = []
  max_merges = vocab_size - MIN_VOCAB_SIZE
  while len(merges) < max_merges:
    while heap and pair_counts.get(heap[0][1], 0) != -heap[0][0]:
      heapq.heappop(heap)
    if not heap or -heap[0][0] < 2:
      break
    _, best = heapq.heappop(heap)
    new = FIRST_MERGE + len(merges)
    merges.append(best)
    changed = set()
    for index in holders.pop(best):
      old = words[index]
      merged = _merge_pair(old, best, new)
      if len(merged) == len(old):
        continue  # A stale holder: an earlier merge already consumed the pair here.
      count = counts[index]
      for pair in zip(old, old[1:]):
        pair_counts[pair] -= count
        changed.add(pair)
      for pair in zip(merged, merged[1:]):
        pair_counts[pair] += count
        holders[pair].add(index)
        changed.add(pair)
      words[index] = merged
    for pair in changed:
      count = pair_counts[pair]
      if count > 0:
        heapq.heappush(heap, (-count, pair))
      else:
        del pair_counts[pair]
        holders.pop(pair, None)
  return BPETokenizer(merges)


class BPETokenizer:
  """Encodes and decodes with a list of merges; see the module doc for the ids.

  Attributes:
    merges: the learned pairs of symbols, in order; merge k makes symbol 257 + k.
    vocab_size: ``260 + len(merges)``: padding, 257 base symbols, the merges, SOT, EOT.
    pad_id, sot_id, eot_id: 0, ``vocab_size - 2`` and ``vocab_size - 1``.
  """

  pad_id = base.PAD_ID

  def __init__(self, merges: Iterable[tuple[int, int]]):
    self.merges = tuple((int(a), int(b)) for a, b in merges)
    # Each symbol's bytes, and whether it ends a word (only a trailing </w> can).
    self._bytes = [bytes([b]) for b in range(256)] + [b""]
    self._ends_word = [False] * 256 + [True]
    for k, (a, b) in enumerate(self.merges):
      if not (0 <= a < FIRST_MERGE + k and 0 <= b < FIRST_MERGE + k) or self._ends_word[a]:
        raise ConfigError(f"BPE merge {k} = ({a}, {b}) joins a symbol that is not yet defined or that ends a word")
      self._bytes.append(self._bytes[a] + self._bytes[b])
      self._ends_word.append(self._ends_word[b])
    self._rank = {pair: k for k, pair in enumerate(self.merges)}
    self.vocab_size = MIN_VOCAB_SIZE + len(self.merges)
    self.sot_id = self.vocab_size - 2
    self.eot_id = self.vocab_size - 1
    self._cache: dict[tuple[int, ...], tuple[int, ...]] = {}

  def _encode_piece(self, piece: tuple[int, ...]) -> tuple[int, ...]:
    """Base symbols of one piece -> its token ids, merging by rank."""
    ids = self._cache.get(piece)
    if ids is not None:
      return ids
    symbols = list(piece)
    while len(symbols) > 1:
      ranks = [self._rank.get(pair) for pair in zip(symbols, symbols[1:])]
      best = min((r for r in ranks if r is not None), default=None)
      if best is None:
        break
      symbols = _merge_pair(symbols, self.merges[best], FIRST_MERGE + best)
    ids = tuple(s + _ID_OFFSET for s in symbols)
    if len(self._cache) >= _CACHE_LIMIT:
      self._cache.clear()
    self._cache[piece] = ids
    return ids

  def encode_text(self, text: str) -> list[int]:
    """One text -> its token ids, without SOT, EOT, padding or truncation."""
    return [i for piece in _pieces(text) for i in self._encode_piece(piece)]

  def encode(self, texts: str | Sequence[str], context_length: int) -> np.ndarray:
    """Encodes texts as int32 [n, context_length]: SOT, tokens, EOT, then 0-padding.

    Laid out as the byte tokenizer does (:func:`.base.pack`): a text too long for the
    context keeps its first ``context_length - 2`` tokens and EOT in the last slot. A
    single string is treated as a batch of one.
    """
    base.check_context_length(context_length)
    if isinstance(texts, str):
      texts = [texts]
    return base.pack((self.encode_text(text) for text in texts), context_length, self.sot_id, self.eot_id)

  def decode(self, tokens: np.ndarray) -> list[str]:
    """Inverts :meth:`encode` up to normalisation and truncation; int [n, L] -> n strings.

    Padding, SOT and EOT are dropped. A space goes after each ``</w>`` that a word
    follows; every other space is in the punctuation pieces' bytes.
    """
    texts = []
    for row in np.asarray(tokens).reshape(-1, np.shape(tokens)[-1]):
      segments, current = [], b""  # Text up to and including each word's </w>.
      for token in row[(row > self.pad_id) & (row < self.sot_id)].tolist():
        symbol = token - _ID_OFFSET
        current += self._bytes[symbol]
        if self._ends_word[symbol]:
          segments.append(current.decode("utf-8", errors="replace"))
          current = b""
      segments.append(current.decode("utf-8", errors="replace"))
      text = segments[0]
      for segment in segments[1:]:
        text += (" " if _WORD_START.match(segment) else "") + segment
      texts.append(text)
    return texts

  def token_strings(self, text: str) -> list[str]:
    """For debugging: each token of ``text`` as a string, ``</w>`` written out."""
    return [self.token_string(i) for i in self.encode_text(text)]

  def token_string(self, token: int) -> str:
    """For debugging: one id as a string ('<pad>', '<sot>', '<eot>', or text + '</w>')."""
    special = {self.pad_id: "<pad>", self.sot_id: "<sot>", self.eot_id: "<eot>"}
    if token in special:
      return special[token]
    symbol = token - _ID_OFFSET
    text = self._bytes[symbol].decode("utf-8", errors="backslashreplace")
    return text + ("</w>" if self._ends_word[symbol] else "")

  def to_json(self) -> str:
    """The merges as JSON; :meth:`from_json` (or ``text.from_json``) reads it back."""
    return json.dumps(
      {
        "kind": _JSON_KIND,
        "version": _JSON_VERSION,
        "vocab_size": self.vocab_size,
        "merges": [list(pair) for pair in self.merges],
      }
    )

  @classmethod
  def from_json(cls, text: str) -> BPETokenizer:
    """Rebuilds a tokenizer from :meth:`to_json`; a one-line ConfigError if it is not one."""
    try:
      spec = json.loads(text)
      if spec.get("kind") != _JSON_KIND or spec.get("version") != _JSON_VERSION:
        raise ConfigError(
          f"BPE JSON has kind={spec.get('kind')!r}, version={spec.get('version')!r}; "
          f"expected kind={_JSON_KIND!r}, version={_JSON_VERSION}"
        )
      result = cls((a, b) for a, b in spec["merges"])
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as error:
      if isinstance(error, ConfigError):
        raise
      raise ConfigError(f"BPE JSON is malformed: {error!r}") from None
    if spec.get("vocab_size", result.vocab_size) != result.vocab_size:
      raise ConfigError(
        f"BPE JSON vocab_size={spec['vocab_size']} disagrees with its "
        f"{len(result.merges)} merges ({result.vocab_size} ids)"
      )
    return result

  def __eq__(self, other) -> bool:
    return isinstance(other, BPETokenizer) and self.merges == other.merges

  def __hash__(self) -> int:
    return hash(self.merges)

  def __repr__(self) -> str:
    return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"
