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

CLIP's own tokenizer (:class:`CLIPTokenizer`, :func:`load_clip_tokenizer`) runs the same
engine on the merges of CLIP's vocabulary file, with CLIP's text cleaning, pre-tokenisation
and ids (SOT 49406, EOT 49407, context 77).
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
    # The id of each symbol; CLIPTokenizer lays its ids out differently.
    self._ids = list(range(_ID_OFFSET, _ID_OFFSET + len(self._bytes)))
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
    ids = tuple(self._ids[s] for s in symbols)
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

    def build(spec: dict) -> BPETokenizer:
      result = cls((a, b) for a, b in spec["merges"])
      if spec.get("vocab_size", result.vocab_size) != result.vocab_size:
        raise ConfigError(
          f"BPE JSON vocab_size={spec['vocab_size']} disagrees with its "
          f"{len(result.merges)} merges ({result.vocab_size} ids)"
        )
      return result

    return base.read_json(text, _JSON_KIND, _JSON_VERSION, "BPE JSON", build)

  def __eq__(self, other) -> bool:
    return type(other) is type(self) and self.merges == other.merges

  def __hash__(self) -> int:
    return hash(self.merges)

  def __repr__(self) -> str:
    return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"


# ----------------------------------------------------------------------------- CLIP's vocabulary

CLIP_VOCAB_SIZE = 49408  # 256 bytes, the 256 bytes ending a word, 48894 merges, SOT, EOT.
CLIP_CONTEXT_LENGTH = 77
_CLIP_BASE_IDS = 512
# The strings open_clip's tokenizer turns into SOT and EOT where a caption contains them.
_CLIP_SPECIALS = ('<start_of_text>', '<end_of_text>')
# CLIP's pre-tokenisation: a special, an English contraction, a run of letters, one digit, or a
# run of other non-space characters; case-insensitive as in CLIP (\p{…} needs the regex module).
_CLIP_PATTERN = '|'.join(_CLIP_SPECIALS) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_JSON_KIND_CLIP = 'clip_bpe'


def clip_byte_order() -> list[int]:
  """The bytes in the order of CLIP's ids 0..255: the printable Latin-1 ones, then the rest ascending.

  The printable ones are '!'..'~', '¡'..'¬' and '®'..'ÿ'; in the vocabulary file each stands for
  itself, and the n-th of the others (control bytes, space, soft hyphen) for chr(256 + n).
  """
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
  return printable + [b for b in range(256) if b not in set(printable)]


def clip_byte_chars() -> dict[int, str]:
  """Each byte's character in CLIP's vocabulary file (see :func:`clip_byte_order`)."""
  order = clip_byte_order()
  return {b: chr(b) if i < 188 else chr(256 + i - 188) for i, b in enumerate(order)}


def clip_clean(text: str) -> str:
  """CLIP's text cleaning: ftfy's repair, HTML entities unescaped twice, whitespace collapsed, lower case."""
  import html

  import ftfy

  text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
  return ' '.join(text.split()).lower()


class CLIPTokenizer(BPETokenizer):
  """CLIP's tokenizer: its byte-level BPE driven by its merges file, its cleaning and its ids.

  The merges run through :class:`BPETokenizer`'s engine. CLIP's first symbols are the bytes and
  the bytes with ``</w>`` attached (a word's last byte); here a word is its bytes then ``</w>``,
  so the engine's first 256 merges join each byte with ``</w>``, in CLIP's byte order, and
  CLIP's merges follow. Every piece of CLIP's pre-tokeniser ends with ``</w>``, so its last
  byte takes that merge first, which is where CLIP starts; the rest then merge alike.

  Ids are CLIP's: byte b is its rank in :func:`clip_byte_order`, the same byte ending a word
  256 more, merge k (line k + 1 of the file) 512 + k, then SOT = ``vocab_size − 2`` and
  EOT = ``vocab_size − 1`` (49406 and 49407): EOT is the largest id, as our text tower needs.
  Padding is 0, as in CLIP, although 0 is also '!': :meth:`decode` stops at EOT.

  Attributes:
    clip_merges: the merges as the file writes them, pairs of strings in CLIP's byte alphabet.
  """

  def __init__(self, merges: Iterable[tuple[str, str]]):
    merges = tuple((str(a), str(b)) for a, b in merges)
    chars = clip_byte_chars()
    order = clip_byte_order()
    symbol = {chars[b]: b for b in range(256)}
    engine = [(b, END_OF_WORD) for b in order]
    for k, b in enumerate(order):
      symbol[chars[b] + '</w>'] = FIRST_MERGE + k
    for line, (first, second) in enumerate(merges):
      if first not in symbol or second not in symbol:
        raise ConfigError(
          f'CLIP merge {line + 1} ({first} {second}) joins a token that no earlier line or byte defines'
        )
      engine.append((symbol[first], symbol[second]))
      symbol[first + second] = FIRST_MERGE + len(engine) - 1
    super().__init__(engine)
    self.clip_merges = merges
    self.vocab_size = _CLIP_BASE_IDS + len(self.clip_merges) + 2
    self.sot_id = self.vocab_size - 2
    self.eot_id = self.vocab_size - 1
    # Symbols: bytes 0..255, </w> (never left alone), then the byte+</w> merges and CLIP's.
    rank = {b: i for i, b in enumerate(order)}
    self._ids = [rank[b] for b in range(256)] + [-1] + list(range(256, self.vocab_size - 2))
    self._symbols = {token_id: s for s, token_id in enumerate(self._ids) if token_id >= 0}
    self._special_ids = dict(zip(_CLIP_SPECIALS, (self.sot_id, self.eot_id)))
    self._pattern = None

  def _split(self, text: str) -> list[str]:
    if self._pattern is None:
      import regex

      self._pattern = regex.compile(_CLIP_PATTERN, regex.IGNORECASE)
    return self._pattern.findall(clip_clean(text))

  def encode_text(self, text: str) -> list[int]:
    """One text -> CLIP's token ids, without SOT, EOT, padding or truncation."""
    ids = []
    for token in self._split(text):
      if token in self._special_ids:
        ids.append(self._special_ids[token])
      else:
        ids.extend(self._encode_piece(tuple(token.encode('utf-8')) + (END_OF_WORD,)))
    return ids

  def decode(self, tokens: np.ndarray) -> list[str]:
    """Each row's tokens after SOT and before EOT, ``</w>`` read as a space; n strings."""
    texts = []
    for row in np.asarray(tokens).reshape(-1, np.shape(tokens)[-1]).tolist():
      start = 1 if row and row[0] == self.sot_id else 0
      end = row.index(self.eot_id) if self.eot_id in row else len(row)
      text = b''
      for token in row[start:end]:
        s = self._symbols.get(token)
        if s is not None:
          text += self._bytes[s] + (b' ' if self._ends_word[s] else b'')
      texts.append(text.decode('utf-8', errors='replace').strip())
    return texts

  def token_string(self, token: int) -> str:
    """For debugging: one id as a string ('<sot>', '<eot>', or text + '</w>')."""
    if token in (self.sot_id, self.eot_id):
      return '<sot>' if token == self.sot_id else '<eot>'
    s = self._symbols[token]
    return self._bytes[s].decode('utf-8', errors='backslashreplace') + ('</w>' if self._ends_word[s] else '')

  def to_json(self) -> str:
    """The merges as the file writes them; ``text.from_json`` reads them back."""
    return json.dumps(
      {'kind': _JSON_KIND_CLIP, 'version': _JSON_VERSION, 'merges': [f'{a} {b}' for a, b in self.clip_merges]}
    )

  @classmethod
  def from_json(cls, text: str) -> CLIPTokenizer:
    """Rebuilds a tokenizer from :meth:`to_json`; a one-line ConfigError if it is not one."""

    def build(spec: dict) -> CLIPTokenizer:
      return cls(_parse_merge(line, k + 1) for k, line in enumerate(spec['merges']))

    return base.read_json(text, _JSON_KIND_CLIP, _JSON_VERSION, 'CLIP BPE JSON', build)

  # Equality and hashing are BPETokenizer's: the engine's merges and CLIP's determine each other.

  def __repr__(self) -> str:
    return f'CLIPTokenizer(vocab_size={self.vocab_size})'


def _parse_merge(line: str, number: int, source: str = 'CLIP BPE JSON') -> tuple[str, str]:
  parts = line.split()
  if len(parts) != 2:
    raise ConfigError(f'{source}: merge {number} is {line!r}; it must be two tokens separated by a space')
  return parts[0], parts[1]


def load_clip_tokenizer(path: str, vocab_size: int = CLIP_VOCAB_SIZE) -> CLIPTokenizer:
  """CLIP's tokenizer from its vocabulary file (``bpe_simple_vocab_16e6.txt.gz``, gzipped or not).

  The file ships with open_clip (inside the package) and with OpenAI's CLIP. Its first line
  holds a version and is skipped, as CLIP does; then line k + 1 is merge k. CLIP reads the
  first ``vocab_size − 514`` merges (48894 for its 49408 ids) and so does this. Encode with
  context length ``CLIP_CONTEXT_LENGTH`` (77) for CLIP's text towers.
  """
  import gzip

  if not isinstance(vocab_size, int) or vocab_size < _CLIP_BASE_IDS + 2:
    raise ConfigError(f'vocab_size={vocab_size!r} must be an integer >= {_CLIP_BASE_IDS + 2} (bytes, SOT and EOT)')
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    text = (gzip.decompress(raw) if raw[:2] == b'\x1f\x8b' else raw).decode('utf-8')
  except (OSError, EOFError, UnicodeDecodeError) as error:
    raise ConfigError(f'CLIP vocabulary file {path} cannot be read: {error}') from None
  lines = text.split('\n')
  count = vocab_size - _CLIP_BASE_IDS - 2
  if len(lines) - 1 < count:
    raise ConfigError(
      f'CLIP vocabulary file {path} must hold {count} merges after its first (version) line for '
      f'vocab_size={vocab_size}; it has {max(len(lines) - 1, 0)} lines after the first'
    )
  return CLIPTokenizer(
    [_parse_merge(line, k + 1, f'CLIP vocabulary file {path}') for k, line in enumerate(lines[1 : 1 + count])]
  )
