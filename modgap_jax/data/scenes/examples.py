"""Materialised splits of the scenes world: the held-out 'test' split, or any slice of 'train'.

Scene i of a split is the same scene the step draws (:mod:`.sample`), rendered and
captioned in jitted chunks, so an evaluation split is exact and costs no files. Labels are
the first object's shape and colour (every scene has at least one object), so zero-shot
(:mod:`.zero_shot`) and the linear probe read the same classes.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import numpy as np

from modgap_jax.data.scenes import sample
from modgap_jax.data.scenes.captions import caption_strings, caption_tokens
from modgap_jax.data.scenes.rendering import render
from modgap_jax.data.scenes.world import SceneWorld
from modgap_jax.errors import check_choice, check_number

if TYPE_CHECKING:
  from modgap_jax.data import examples as data_examples


@functools.partial(jax.jit, static_argnums=(0, 2))
def _chunk(world: SceneWorld, key: jax.Array, split: str, indices: jax.Array):
  scenes = sample.draw_scenes(world, key, split, indices)
  tokens = caption_tokens(world, scenes, world.max_caption_words + 2)  # Room for every word.
  return render(world, scenes), tokens, scenes.shape[:, 0], scenes.colour[:, 0]


def make_examples(
  world: SceneWorld, seed: int, split: str, count: int | None = None, *, first: int = 0, batch: int = 512
) -> data_examples.InMemoryExamples:
  """Scenes ``first .. first + count - 1`` of ``split`` as an in-memory split.

  Args:
    world: the world.
    seed: the data seed (as given to ``device_batch`` for 'train').
    split: 'train' or 'test' (the held-out stream).
    count: how many scenes; default ``world.num_test`` for 'test' (required for 'train').
    first: the first scene index.
    batch: scenes rendered per jitted call.

  Returns:
    :class:`InMemoryExamples`: uint8 [count, S, S, 3] images, one caption per image, labels
    ``{'shape', 'colour'}`` of the first object, with ``class_names``.
  """
  # Imported here: the split classes load the TFDS builders, which the step never needs.
  from modgap_jax.data import examples as data_examples

  check_choice("split", split, tuple(sample.SPLIT_IDS))
  if count is None and split == "test":
    count = world.num_test
  count = check_number("count", count, 1, integer=True)
  first = check_number("first", first, 0, integer=True)
  batch = check_number("batch", batch, 1, integer=True)
  key = sample.as_key(seed)
  parts = []
  for start in range(first, first + count, batch):
    # Always `batch` indices, so one program serves every chunk; the overrun is dropped.
    indices = np.arange(start, start + batch, dtype=np.uint32)
    parts.append([np.asarray(x)[: first + count - start] for x in _chunk(world, key, split, indices)])
  images, tokens, shape, colour = (np.concatenate(column) for column in zip(*parts))
  return data_examples.InMemoryExamples(
    images,
    [[text] for text in caption_strings(world, tokens)],
    {"shape": shape, "colour": colour},
    class_names={"shape": world.shapes, "colour": world.colour_names},
  )
