"""Tests of the tokenizer interface and the byte-level BPE (modgap_jax.data.text).

Merges are checked against a hand computation and against a naive BPE written here (its own
pre-tokeniser, a full pair recount per merge); encodings against the id layout of the byte
tokenizer; and the compression on the Twemoji training captions against the byte tokenizer.
"""

import collections
import json

import numpy as np
import pytest

from modgap_jax import data
from modgap_jax.data.text import base, bpe, byte
from modgap_jax.errors import ConfigError

EOW = 256  # The end-of-word symbol.
UNSEEN = [
  "Café crème brûlée",
  "an emoji of face with spiral eyes 😵‍💫",
  "🙂 face",
  "naïve résumé, déjà vu!",
  "ジャンプ 東京 — ¿qué?",
  "e\u0301 combining accent",  # 'e' then a combining acute: a word, then a mark.
  "  weird   spacing -- a - b , c :d  ",
  "under_score 123 4.5% x+y=z",
  "zzzqqq xylophone quokka",
]


# ------------------------------------------------------------------ naive reference BPE


def _is_word_char(char: str) -> bool:
  return char.isalnum() or char == "_"  # Python's definition of \w.


def _naive_pieces(text: str) -> list[tuple[int, ...]]:
  """A character scanner for the documented pre-tokenisation (no regex).

  Words are runs of word characters + </w>; any other non-space character is a piece with
  the space before it (if not already taken) and the space after it.
  """
  text = " ".join(text.lower().split())
  pieces, i, taken = [], 0, -1  # taken: index of the last space a piece consumed.
  while i < len(text):
    if _is_word_char(text[i]):
      j = i
      while j < len(text) and _is_word_char(text[j]):
        j += 1
      pieces.append(tuple(text[i:j].encode("utf-8")) + (EOW,))
      i = j
    elif text[i] == " ":
      i += 1
    else:
      start = i - 1 if i > 0 and text[i - 1] == " " and taken != i - 1 else i
      stop = i + 2 if i + 1 < len(text) and text[i + 1] == " " else i + 1
      taken = stop - 1 if stop == i + 2 else taken
      pieces.append(tuple(text[start:stop].encode("utf-8")))
      i = stop
  return pieces


def _naive_merge(symbols, pair, new):
  out, i = [], 0
  while i < len(symbols):
    if tuple(symbols[i : i + 2]) == pair:
      out.append(new)
      i += 2
    else:
      out.append(symbols[i])
      i += 1
  return tuple(out)


def _naive_bpe(texts, max_merges):
  """Recounts every pair of every piece before each merge; returns (merges, final pieces)."""
  words = collections.Counter(p for t in texts for p in _naive_pieces(t))
  segmentation = {w: w for w in words}
  merges = []
  while len(merges) < max_merges:
    counts = collections.Counter()
    for word, n in words.items():
      seq = segmentation[word]
      for pair in zip(seq, seq[1:]):
        counts[pair] += n
    if not counts:
      break
    best = min(counts, key=lambda p: (-counts[p], p))
    if counts[best] < 2:
      break
    merges.append(best)
    segmentation = {w: _naive_merge(s, best, 257 + len(merges) - 1) for w, s in segmentation.items()}
  return merges, segmentation


def _random_corpus(rng, n):
  syllables = ["lo", "w", "er", "new", "est", "wid", "a", "an", "ma", "n", "wo", "é", "ü", "😀"]
  punctuation = ["", "", "", ",", ":", " -", "-", "!"]
  texts = []
  for _ in range(n):
    words = [
      "".join(rng.choice(syllables, size=rng.integers(1, 4))) + rng.choice(punctuation)
      for _ in range(rng.integers(1, 7))
    ]
    texts.append(("  " if rng.random() < 0.2 else "") + " ".join(words).upper())
  return texts


def _flat_captions(split):
  return [c for caps in split.captions() for c in caps]


# --------------------------------------------------------------------------- training


def test_bpe_merges_match_a_hand_computation():
  # Pieces: low</w> lower</w> lowest</w> newer</w> wider</w>, once each. Pair counts: lo, ow,
  # we, er, r</w> occur 3 times; the smallest pair of ids is (e, r). Then lo, ow, er</w> (3):
  # (l, o) < (o, w) < (er, </w>). Then (er, </w>) = (257, 256) < (lo, w) = (258, 119).
  # Then (lo, w); after it every pair occurs once, so training stops.
  tok = bpe.train_bpe(["low lower lowest", "newer wider"], 1000)
  e, r, l, o, w = (ord(c) for c in "erlow")  # noqa: E741  (the letters themselves)
  assert tok.merges == ((e, r), (l, o), (257, EOW), (258, w))
  assert tok.vocab_size == 260 + 4 and tok.eot_id == 263 and tok.sot_id == 262
  assert tok.token_strings("lower lowest") == ["low", "er</w>", "low", "e", "s", "t", "</w>"]
  # A vocabulary cap stops training early, after a prefix of the same merges.
  assert bpe.train_bpe(["low lower lowest", "newer wider"], 262).merges == tok.merges[:2]


@pytest.mark.parametrize("seed,max_merges", [(0, 10_000), (1, 10_000), (2, 40)])
def test_bpe_matches_a_naive_reference(seed, max_merges):
  texts = _random_corpus(np.random.default_rng(seed), 60)
  merges, segmentation = _naive_bpe(texts, max_merges)
  tok = bpe.train_bpe(texts, 260 + max_merges)
  assert len(merges) > 20
  assert list(tok.merges) == merges
  assert tok.vocab_size == 260 + len(merges)
  # Encoding by rank reproduces the segmentation training reached on every piece.
  for piece, symbols in segmentation.items():
    assert tok._encode_piece(piece) == tuple(s + 1 for s in symbols)
  # The naive pre-tokeniser agrees on whole texts.
  for text in texts + UNSEEN:
    expected = [i for p in _naive_pieces(text) for i in tok._encode_piece(p)]
    assert tok.encode_text(text) == expected


def test_bpe_is_deterministic_and_independent_of_caption_order():
  texts = _random_corpus(np.random.default_rng(3), 200)
  first = bpe.train_bpe(texts, 400)
  again = bpe.train_bpe(texts, 400)
  shuffled = bpe.train_bpe([texts[i] for i in np.random.default_rng(4).permutation(len(texts))], 400)
  assert first.merges == again.merges == shuffled.merges and first == shuffled
  np.testing.assert_array_equal(first.encode(texts + UNSEEN, 24), shuffled.encode(texts + UNSEEN, 24))


def test_bpe_stops_when_no_pair_repeats():
  tok = bpe.train_bpe(["abc"], 5000)  # Every pair occurs once.
  assert tok.merges == () and tok.vocab_size == bpe.MIN_VOCAB_SIZE == 260
  assert bpe.train_bpe([], 300).vocab_size == 260


# --------------------------------------------------------------------------- encoding


def test_bpe_round_trips_training_and_unseen_text():
  texts = _random_corpus(np.random.default_rng(5), 100)
  tok = bpe.train_bpe(texts + ["an emoji of kiss: woman, woman with medium-light skin tone"], 600)
  for batch in (texts, UNSEEN):
    tokens = tok.encode(batch, 96)
    assert tokens.max() < tok.vocab_size  # Unseen words fall back to smaller pieces.
    assert tok.decode(tokens) == [base.normalize(t) for t in batch]
  assert tok.decode(tok.encode("Café", 8)) == ["café"]


def test_bpe_id_layout_matches_the_byte_tokenizer_conventions():
  tok = bpe.train_bpe(_random_corpus(np.random.default_rng(6), 100), 500)
  texts = ["lower newer", "ж", ""]
  tokens = tok.encode(texts, 16)
  assert tokens.dtype == np.int32 and tokens.shape == (3, 16)
  assert tok.pad_id == base.PAD_ID == 0 and tok.eot_id == tok.vocab_size - 1 == tok.sot_id + 1
  for row, text in zip(tokens, texts):
    body = tok.encode_text(text)
    assert row.tolist() == [tok.sot_id] + body + [tok.eot_id] + [0] * (14 - len(body))
    assert int(np.argmax(row)) == len(body) + 1  # The text tower's EOT lookup.
  # A byte no merge covers keeps the byte tokenizer's id (byte + 1); "ж" is 0xD0 0xB6, </w>.
  assert tok.encode_text("ж") == [0xD0 + 1, 0xB6 + 1, EOW + 1]
  assert byte.tokenize("ж", 4)[0, 1:3].tolist() == [0xD0 + 1, 0xB6 + 1]


def test_truncation_keeps_eot_last_for_both_tokenizers():
  tok = bpe.train_bpe(["lower newer wider"] * 3, 400)
  long_text = " ".join(["lower newer wider unseen"] * 10)
  bodies = {"bpe": tok.encode_text(long_text), "byte": [b + 1 for b in long_text.encode("utf-8")]}
  for name, encoder in (("bpe", tok), ("byte", data.ByteTokenizer())):
    tokens = encoder.encode([long_text, "lower"], 8)
    assert tokens[0].tolist() == [encoder.sot_id] + bodies[name][:6] + [encoder.eot_id]
    assert (np.argmax(tokens, axis=1) == [7, tokens[1].tolist().index(encoder.eot_id)]).all()
    assert encoder.encode("single", 12).shape == (1, 12)
    with pytest.raises(ConfigError, match="context_length"):
      encoder.encode(["a"], 1)


def test_byte_tokenizer_object_is_the_module_functions():
  tok = data.ByteTokenizer()
  texts = ["A photo of SEVEN", "café", "🙂"]
  np.testing.assert_array_equal(tok.encode(texts, 20), data.tokenize(texts, 20))
  assert tok.decode(tok.encode(texts, 20)) == data.detokenize(data.tokenize(texts, 20))
  assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (byte.VOCAB_SIZE, byte.SOT_ID, byte.EOT_ID) == (259, 257, 258)


# ------------------------------------------------------------------- factory, storage


def test_make_tokenizer_and_json_round_trip():
  captions = _random_corpus(np.random.default_rng(7), 80)
  assert data.make_tokenizer("byte", captions, 999) == data.ByteTokenizer()
  tok = data.make_tokenizer("bpe", captions, 450)
  assert tok == bpe.train_bpe(captions, 450) and tok.vocab_size <= 450
  with pytest.raises(ConfigError, match="tokenizer='wordpiece'.*'byte', 'bpe'"):
    data.make_tokenizer("wordpiece", captions, 450)
  with pytest.raises(ConfigError, match="vocab_size=259 must be an integer >= 260"):
    data.make_tokenizer("bpe", captions, 259)

  for original in (tok, data.ByteTokenizer()):
    restored = data.tokenizer_from_json(original.to_json())
    assert restored == original and restored.vocab_size == original.vocab_size
    texts = captions + UNSEEN
    np.testing.assert_array_equal(restored.encode(texts, 20), original.encode(texts, 20))
  assert bpe.BPETokenizer.from_json(tok.to_json()) == tok

  spec = json.loads(tok.to_json())
  bad = [dict(spec, merges=[[0, 999]]), dict(spec, vocab_size=7), dict(spec, kind="byte", version=9), spec["merges"]]
  for broken in [json.dumps(b) for b in bad] + ["{not json"]:
    with pytest.raises(ConfigError):
      bpe.BPETokenizer.from_json(broken)
  with pytest.raises(ConfigError, match="kind"):
    data.tokenizer_from_json(json.dumps({"kind": "sentencepiece"}))


# --------------------------------------------------------------------------- pipeline


def test_pipeline_with_bpe_keeps_shapes_and_captions():
  n = 24
  images = np.zeros((n, 4, 4, 3), dtype=np.uint8)
  captions = [[f"an emoji of thing {i}", f"thing {i} emoji"] for i in range(n)]
  ds = data.InMemoryExamples(images, captions, {"label": np.arange(n)})
  tok = data.make_tokenizer("bpe", _flat_captions(ds), 320)
  fields = dict(global_batch_size=8, num_devices=4, image_size=4, context_length=12, seed=0)
  by_bytes = next(data.train_batches(ds, data.TrainStream(**fields)))
  by_bpe = next(data.train_batches(ds, data.TrainStream(**fields, tokenizer=tok)))
  assert {k: v.shape for k, v in by_bytes.items()} == {k: v.shape for k, v in by_bpe.items()}
  assert by_bpe["text"].dtype == np.int32 and by_bpe["text"].max() == tok.eot_id
  # The same captions (the draw does not depend on the tokenizer); 10 bytes cut them, BPE does not.
  flat = lambda batch: batch["text"].reshape(-1, 12)
  whole, cut = tok.decode(flat(by_bpe)), data.detokenize(flat(by_bytes))
  assert set(whole) <= set(_flat_captions(ds))
  assert all(w.startswith(c) and len(c) == 10 for w, c in zip(whole, cut))

  texts = []
  for b_bytes, b_bpe in zip(
    data.eval_text_batches(ds, batch_size=16, num_devices=4, context_length=12),
    data.eval_text_batches(ds, batch_size=16, num_devices=4, context_length=12, tokenizer=tok),
  ):
    assert {k: v.shape for k, v in b_bytes.items()} == {k: v.shape for k, v in b_bpe.items()}
    np.testing.assert_array_equal(b_bytes["image_index"], b_bpe["image_index"])
    texts.extend(np.array(tok.decode(flat(b_bpe)), dtype=object)[b_bpe["mask"].reshape(-1)])
  assert texts == _flat_captions(ds)


def test_bpe_compresses_twemoji_captions(tmp_path):
  captions = _flat_captions(data.load_examples("twemoji_captions", "train", str(tmp_path)))
  tok = bpe.train_bpe(captions, 2048)
  assert tok.vocab_size == 2048
  lengths = {}  # Tokens per caption, SOT and EOT included; the context is long enough for all.
  for name, encoder in (("byte", data.ByteTokenizer()), ("bpe", tok)):
    tokens = encoder.encode(captions, 160)
    assert (tokens[:, -1] == 0).all()
    lengths[name] = (tokens != 0).sum(axis=1)
  summary = {name: (float(np.mean(v)), float(np.percentile(v, 95))) for name, v in lengths.items()}
  print(f"tokens per caption (mean, p95) over {len(captions)} captions: {summary}")
  assert summary["bpe"][0] < summary["byte"][0] / 3
  assert summary["bpe"][1] <= 24 < 32 < summary["byte"][1]  # Fits a 32-token context; bytes do not.
  assert tok.decode(tok.encode(captions, 32)) == [base.normalize(c) for c in captions]
