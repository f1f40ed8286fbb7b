"""The scenes world: images and captions drawn on the devices, inside the step.

A scene is 1..K coloured shapes on a dark background, on a 3 × 3 grid, with a caption that
names each attribute of each object with probability ``caption_detail``. Every scene is a
pure function of (seed, split, index), so there are no files, the training stream can be
unbounded, and resuming or changing the number of devices changes nothing.

Modules, each importing only those above it:
  ``world``      :class:`SceneWorld` (the frozen, validated config), the attribute sets,
                 the caption grammar and the vocabulary;
  ``sample``     :func:`draw_scenes`: the attributes of scenes, as a :class:`Scenes` pytree;
  ``rendering``  :func:`render`: antialiased uint8 images;
  ``captions``   :func:`caption_tokens` (word ids on the device), :func:`caption_strings`,
                 :func:`parse_caption`;
  ``batch``      :func:`device_batch`: a device's share of a training step's batch;
  ``examples``   :func:`make_examples`: a materialised split (the held-out 'test' split);
  ``zero_shot``  :func:`zero_shot_classes`: prompts for the first object's shape or colour;
  ``config``     a run's ``config.dataset.scenes`` to a world (:func:`world_from_config`).

Typical use::

  from modgap_jax.data import scenes
  world = scenes.SceneWorld(caption_detail=0.5)
  batch = scenes.device_batch(world, seed, step, 128, mean, std, context_length=32)
  test = scenes.make_examples(world, seed, "test")          # 5000 held-out scenes
  tokenizer = world.tokenizer()                              # what the device's ids mean
"""

from modgap_jax.data.scenes.batch import check_num_train, device_batch, stream_draw, train_indices
from modgap_jax.data.scenes.captions import caption_strings, caption_tokens, parse_caption
from modgap_jax.data.scenes.config import NAME, world_from_config
from modgap_jax.data.scenes.examples import make_examples
from modgap_jax.data.scenes.rendering import render
from modgap_jax.data.scenes.sample import SPLIT_IDS, Scenes, draw_scenes
from modgap_jax.data.scenes.world import LABEL_KEYS, SHAPE_KINDS, SceneWorld
from modgap_jax.data.scenes.zero_shot import zero_shot_classes

__all__ = [
  "NAME",
  "world_from_config",
  "LABEL_KEYS",
  "SHAPE_KINDS",
  "SPLIT_IDS",
  "SceneWorld",
  "Scenes",
  "caption_strings",
  "caption_tokens",
  "check_num_train",
  "device_batch",
  "stream_draw",
  "draw_scenes",
  "make_examples",
  "parse_caption",
  "render",
  "train_indices",
  "zero_shot_classes",
]
