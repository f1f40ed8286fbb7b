"""Drawing scene attributes: each scene a pure function of (seed, split, index).

The key of scene i of ``split`` is::

  fold_in(fold_in(fold_in(PRNGKey(seed), SCENES_TAG), SPLIT_IDS[split]), i)

so the 'train' and 'test' splits are disjoint streams and any scene can be drawn alone.
A scene's randomness is one call ``jax.random.bits(scene key, (16 + 8K,))`` (one threefry
program compiles and runs far faster than one per attribute), cut into fields in the order
of :data:`FIELDS`; a word w gives the uniform ``u = (w >> 8) · 2⁻²⁴`` in [0, 1), and an
integer uniform in [0, n) is ``floor(u · n)`` (its bias, below n · 2⁻²⁴, is far below any
test's resolution). In scene i, with K = ``world.max_objects``:

- the object count is uniform in [min_objects, max_objects]; objects 0..count-1 are
  present (``present``), the rest are padding;
- the K objects take K distinct grid cells: the first K of the 9 cells sorted by 9 random
  words, a uniform random K-subset in random order;
- each object's (colour, shape) pair is uniform over ``world.pairs(split)`` ('train'
  leaves out the held-out pairs), its size uniform, its jitter uniform in [-1, 1]²;
- each of the 4 attributes (:data:`world.ATTRIBUTES`) of each object is named in the
  caption with probability ``caption_detail``, independently (``u < caption_detail``);
- the template is uniform, the background colour uniform in [0, background_max]³;
- two words are the key of the background noise.
"""

from __future__ import annotations

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np

from modgap_jax.data.scenes.world import GRID, SceneWorld
from modgap_jax.errors import check_choice

SCENES_TAG = 0x5CE7E5  # The scenes world's stream under a run's seed.
SPLIT_IDS = {"train": 0, "test": 1}
ORDER_STREAM = 2  # Epoch orders of a fixed training pool (see batch.py); no split uses it.
# The fields of a scene's random words, in order, and their lengths for K object slots.
FIELDS = (
  ("count", lambda k: 1),
  ("cells", lambda k: GRID * GRID),
  ("pair", lambda k: k),
  ("size", lambda k: k),
  ("jitter", lambda k: 2 * k),
  ("named", lambda k: 4 * k),
  ("template", lambda k: 1),
  ("background", lambda k: 3),
  ("noise_key", lambda k: 2),
)


@flax.struct.dataclass
class Scenes:
  """The attributes of n scenes of K object slots each; ids index the world's tuples.

  Attributes:
    present: bool [n, K]; a prefix of each row (objects are painted and named in order).
    shape, colour, size: int32 [n, K] ids into ``world.shapes`` / ``colours`` / ``sizes``.
    cell: int32 [n, K] in 0..8, ``3 · row + column``; distinct within a scene.
    jitter: float32 [n, K, 2] in [-1, 1]: (x, y) offset of the centre, as a share of the
      room its cell leaves (see rendering.py).
    named: bool [n, K, 4]: whether the caption names (size, colour, shape, position).
    template: int32 [n], an id into ``world.templates``.
    background: float32 [n, 3] in [0, 1].
    noise_key: uint32 [n, 2], the key of the background noise.
  """

  present: jax.Array
  shape: jax.Array
  colour: jax.Array
  size: jax.Array
  cell: jax.Array
  jitter: jax.Array
  named: jax.Array
  template: jax.Array
  background: jax.Array
  noise_key: jax.Array


def as_key(key_or_seed) -> jax.Array:
  """A raw uint32 [2] key: an integer seed becomes ``PRNGKey(seed)``; a key is kept."""
  if isinstance(key_or_seed, jax.Array) and jnp.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(key_or_seed)
  if np.ndim(key_or_seed) == 0:
    return jax.random.PRNGKey(key_or_seed)
  return jnp.asarray(key_or_seed, jnp.uint32)


def stream_key(key_or_seed, stream: int) -> jax.Array:
  """``fold_in(fold_in(key, SCENES_TAG), stream)``: a split's stream, or ``ORDER_STREAM``."""
  return jax.random.fold_in(jax.random.fold_in(as_key(key_or_seed), SCENES_TAG), stream)


def _fields(key: jax.Array, slots: int) -> dict[str, jax.Array]:
  """One scene's random uint32 words, cut into :data:`FIELDS`."""
  sizes = [size(slots) for _, size in FIELDS]
  words = jax.random.bits(key, (sum(sizes),), jnp.uint32)
  ends = np.cumsum(sizes)
  return {name: words[end - size : end] for (name, _), size, end in zip(FIELDS, sizes, ends)}


def _uniform(words: jax.Array) -> jax.Array:
  """uint32 words -> float32 uniforms in [0, 1) on a grid of 2⁻²⁴ (exact in float32)."""
  return (words >> 8).astype(jnp.float32) * (1.0 / (1 << 24))


def _integer(words: jax.Array, low: int, high: int) -> jax.Array:
  """uint32 words -> int32 uniform in [low, high)."""
  return low + jnp.floor(_uniform(words) * (high - low)).astype(jnp.int32)


def _draw_one(world: SceneWorld, pairs: np.ndarray, key: jax.Array) -> Scenes:
  k = world.max_objects
  f = _fields(key, k)
  pair = jnp.asarray(pairs)[_integer(f["pair"], 0, len(pairs))]
  return Scenes(
    present=jnp.arange(k) < _integer(f["count"][0], world.min_objects, world.max_objects + 1),
    shape=pair[:, 1],
    colour=pair[:, 0],
    size=_integer(f["size"], 0, len(world.sizes)),
    cell=jnp.argsort(f["cells"])[:k].astype(jnp.int32),
    jitter=2.0 * _uniform(f["jitter"]).reshape(k, 2) - 1.0,
    named=_uniform(f["named"]).reshape(k, 4) < world.caption_detail,
    template=_integer(f["template"][0], 0, len(world.templates)),
    background=_uniform(f["background"]) * world.background_max,
    noise_key=f["noise_key"],
  )


@functools.partial(jax.jit, static_argnames=("world", "split"))
def draw_scenes(world: SceneWorld, key_or_seed, split: str, indices) -> Scenes:
  """The attributes of scenes ``indices`` of ``split``; jitted, with ``world`` and ``split`` static.

  Args:
    world: the static world.
    key_or_seed: an integer seed (or a key) that fixes every scene of the run.
    split: 'train' or 'test'.
    indices: int [n] scene indices in [0, 2**32).

  Returns:
    :class:`Scenes` with leading axis n.
  """
  check_choice("split", split, tuple(SPLIT_IDS))
  base = stream_key(key_or_seed, SPLIT_IDS[split])
  indices = jnp.asarray(indices).astype(jnp.uint32)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(indices)
  return jax.vmap(lambda key: _draw_one(world, world.pairs(split), key))(keys)
