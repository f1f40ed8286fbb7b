"""Zero-shot classes of the scenes world: the first object's shape, or its colour.

The prompts are what a caption says of one object with only that attribute named, in each
of the world's paraphrase templates: for shape, "a picture of a circle"; for colour,
"a picture of an orange shape". The article belongs to the word it stands before, so it is
part of the class name ("a circle", "an orange") and each template has one ``{}`` where the
object goes. Every prompt uses only the world's vocabulary, so the word tokenizer encodes
it without unknown words. Class k names label id k of :func:`.examples.make_examples`.
"""

from __future__ import annotations

from modgap_jax.data.scenes.world import GENERIC_SHAPE, LABEL_KEYS, SLOT, SceneWorld, article
from modgap_jax.errors import check_choice


def zero_shot_classes(world: SceneWorld, label_key: str = "shape") -> tuple[list[str], list[str]]:
  """``(classnames, templates)`` for ``label_key`` 'shape' or 'colour'; see the module doc."""
  check_choice("dataset.zero_shot_label", label_key, LABEL_KEYS)
  names = world.shapes if label_key == "shape" else world.colour_names
  obj = "{}" if label_key == "shape" else "{} " + GENERIC_SHAPE
  return [f"{article(name)} {name}" for name in names], [t.replace(SLOT, obj) for t in world.templates]
