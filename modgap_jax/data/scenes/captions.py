"""Captions of scenes: word ids made on the device, the strings they spell, and a parser.

:func:`caption_tokens` builds every caption from tables of the world's word ids
(:meth:`SceneWorld.tokenizer`): one fixed-width slot per object, ::

  [and, a|an, size, colour, shape or "shape", position phrase (up to 4 words)]

with an empty slot (PAD, id 0) for every word not said ("and" before objects 1.., an
attribute not named, an absent object), between the template's prefix and suffix words.
The PADs are then squeezed out (a cumsum gives each kept word its place, a scatter puts it
there) and the row is laid out as every tokenizer does (``text.base.pack``)::

  [SOT, w_1, ..., w_k, EOT, 0, ..., 0]

truncated, if it must be, to its first L - 2 words with EOT in the last slot. So
``world.tokenizer().encode(caption_strings(world, tokens), L)`` gives ``tokens`` back.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from modgap_jax.data.scenes.sample import Scenes
from modgap_jax.data.scenes.world import ARTICLES, GENERIC_SHAPE, JOIN, POSITIONS, SLOT, SceneWorld, article
from modgap_jax.data.text.base import PAD_ID, check_context_length, normalize

POSITION_SLOTS = max(len(phrase.split()) for _, phrase in POSITIONS)


def _ids(tokenizer, words: list[str], width: int) -> np.ndarray:
  row = np.full(width, PAD_ID, np.int32)
  row[: len(words)] = [tokenizer.id_of(w) for w in words]
  return row


def _tables(world: SceneWorld) -> dict[str, Any]:
  """Tables of word ids (NumPy, and ints), made at trace time: the world is static."""
  tok = world.tokenizer()
  halves = [t.split(SLOT) for t in world.templates]
  prefix, suffix = ([h[side].split() for h in halves] for side in (0, 1))
  vowel = np.zeros(tok.vocab_size, bool)
  for word in tok.words:
    vowel[tok.id_of(word)] = article(word) == "an"
  return {
    "tokenizer": tok,
    "size": np.asarray([tok.id_of(w) for w in world.size_names], np.int32),
    "colour": np.asarray([tok.id_of(w) for w in world.colour_names], np.int32),
    "shape": np.asarray([tok.id_of(w) for w in world.shapes], np.int32),
    "generic": tok.id_of(GENERIC_SHAPE),
    "articles": np.asarray([tok.id_of(w) for w in ARTICLES], np.int32),
    "join": tok.id_of(JOIN),
    "vowel": vowel,
    "position": np.stack([_ids(tok, phrase.split(), POSITION_SLOTS) for _, phrase in POSITIONS]),
    "prefix": np.stack([_ids(tok, p, max(map(len, prefix), default=0)) for p in prefix]),
    "suffix": np.stack([_ids(tok, s, max(map(len, suffix), default=0)) for s in suffix]),
  }


def compact(body: jax.Array, sot: int, eot: int, context_length: int) -> jax.Array:
  """int [M] words with PAD gaps -> int32 [L]: SOT, the words in order, EOT, 0-padding."""
  keep = body != PAD_ID
  place = jnp.cumsum(keep) - 1  # Where each kept word goes in the body.
  room = context_length - 2
  target = jnp.where(keep & (place < room), place + 1, context_length)  # Out of range: dropped.
  out = jnp.zeros(context_length, jnp.int32).at[target].set(body.astype(jnp.int32), mode="drop")
  return out.at[0].set(sot).at[1 + jnp.minimum(keep.sum(), room)].set(eot)


@functools.partial(jax.jit, static_argnames=("world", "context_length"))
def caption_tokens(world: SceneWorld, scenes: Scenes, context_length: int) -> jax.Array:
  """int32 [n, context_length]: each scene's caption in the world's word ids; jitted, ``world`` and L static."""
  check_context_length(context_length)
  tables = _tables(world)
  tok = tables.pop("tokenizer")
  t = {key: jnp.asarray(value) for key, value in tables.items()}
  n, k = scenes.shape.shape
  named = scenes.named & scenes.present[..., None]
  size = jnp.where(named[..., 0], t["size"][scenes.size], PAD_ID)
  colour = jnp.where(named[..., 1], t["colour"][scenes.colour], PAD_ID)
  shape = jnp.where(named[..., 2], t["shape"][scenes.shape], t["generic"])
  first = jnp.where(size != PAD_ID, size, jnp.where(colour != PAD_ID, colour, shape))
  articles = t["articles"][t["vowel"][first].astype(jnp.int32)]
  join = jnp.broadcast_to(jnp.where(jnp.arange(k) > 0, t["join"], PAD_ID), (n, k))
  position = jnp.where(named[..., 3:], t["position"][scenes.cell], PAD_ID)
  slots = jnp.concatenate([jnp.stack([join, articles, size, colour, shape], -1), position], -1)
  slots = jnp.where(scenes.present[..., None], slots, PAD_ID).reshape(n, -1)
  body = jnp.concatenate([t["prefix"][scenes.template], slots, t["suffix"][scenes.template]], -1)
  return jax.vmap(lambda row: compact(row, tok.sot_id, tok.eot_id, context_length))(body)


def caption_strings(world: SceneWorld, tokens) -> list[str]:
  """int [n, L] caption tokens -> n strings (the world tokenizer's decode)."""
  return world.tokenizer().decode(np.asarray(tokens))


def _parse_object(world: SceneWorld, words: list[str]) -> dict[str, str | None]:
  phrases = {phrase: name for name, phrase in POSITIONS}
  if len(words) < 2 or words[0] not in ARTICLES or words[0] != article(words[1]):
    raise ValueError(f"object {' '.join(words)!r} does not start with its article")
  found, rest = {}, words[1:]
  for key, names in (("size", world.size_names), ("colour", world.colour_names)):
    found[key] = rest.pop(0) if rest and rest[0] in names else None
  if not rest or (rest[0] not in world.shapes and rest[0] != GENERIC_SHAPE):
    raise ValueError(f"object {' '.join(words)!r} has no shape word")
  found["shape"] = None if rest[0] == GENERIC_SHAPE else rest[0]
  place = " ".join(rest[1:])
  if place and place not in phrases:
    raise ValueError(f"object {' '.join(words)!r} ends in {place!r}, not a position")
  found["position"] = phrases.get(place)
  return found


def _parse_objects(world: SceneWorld, words: list[str]) -> list[dict[str, str | None]]:
  groups, current = [], []
  for word in words:
    if word == JOIN:
      groups.append(current)
      current = []
    else:
      current.append(word)
  return [_parse_object(world, group) for group in groups + [current]]


def parse_caption(world: SceneWorld, text: str) -> dict[str, Any]:
  """Reads back what a caption says: its template and each object's named attributes.

  Returns ``{'template': id, 'objects': [{'size', 'colour', 'shape', 'position'}, ...]}``
  in caption order, each attribute a name of the world, or None when the caption does not
  name it. Raises ValueError for text that no template and object grammar of the world
  produces (the first template that reads the whole text wins).
  """
  words = normalize(text).split()
  errors = []
  for index, template in enumerate(world.templates):
    prefix, suffix = (half.split() for half in template.split(SLOT))
    middle = words[len(prefix) : len(words) - len(suffix)]
    if words[: len(prefix)] != prefix or words[len(words) - len(suffix) :] != suffix or not middle:
      continue
    try:
      return {"template": index, "objects": _parse_objects(world, middle)}
    except ValueError as error:
      errors.append(f"template {index}: {error}")
  raise ValueError(f"caption {text!r} does not parse: {'; '.join(errors) or 'no template matches'}")
