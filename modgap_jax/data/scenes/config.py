"""The scenes world as a run's dataset: ``config.dataset.scenes`` to a :class:`SceneWorld`.

A run selects the world with ``dataset.name = 'scenes'``; its fields (:data:`DEFAULTS`) sit
under ``dataset.scenes``. The world renders at the model's ``model.image_size``. Which
scenes a run sees:

- training: the stream of seed ``config.seed`` (unbounded with ``num_train = 0``, else a
  fixed pool of ``num_train`` scenes), drawn inside the step;
- evaluation: the held-out split 'test' of seed ``dataset.scenes.seed``, ``num_test`` scenes,
  the same for every run seed, so that seeds differ in training data and initialisation
  but are measured on one split;
- the linear probe: the first ``num_probe`` scenes of the 'train' stream of that seed.

The stream has no epochs; ``epoch_size`` scenes count as one wherever a config speaks in
epochs (``num_epochs``, ``optimizer.warmup_epochs``). A fixed pool's epoch is the pool.
"""

from __future__ import annotations

import ml_collections

from modgap_jax.data.scenes.world import SceneWorld
from modgap_jax.errors import check_number

NAME = "scenes"
FIELD = "dataset.scenes."

# () for shapes, colours, sizes and templates: the world's own (see SceneWorld).
DEFAULTS = dict(
  min_objects=1,
  max_objects=2,
  shapes=(),
  colours=(),
  sizes=(),
  templates=(),
  caption_detail=1.0,
  holdout_pairs=(),
  jitter=1.0,
  background_max=0.2,
  background_noise=0.0,
  supersample=4,
  num_train=0,
  num_test=5000,
  num_probe=2000,
  epoch_size=10_000,
  seed=0,
)


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(DEFAULTS)


def _nested_tuple(value):
  """ConfigDict turns tuples into lists on the way through JSON; the world wants tuples."""
  return tuple(_nested_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def world_from_config(dataset_config: ml_collections.ConfigDict, image_size: int) -> SceneWorld:
  """The world of ``dataset_config.scenes`` at ``image_size`` px; every field checked by name."""
  fields = dataset_config.scenes
  given = {k: _nested_tuple(fields[k]) for k in ("shapes", "colours", "sizes", "templates") if len(fields[k])}
  return SceneWorld(
    image_size=image_size,
    min_objects=fields.min_objects,
    max_objects=fields.max_objects,
    caption_detail=fields.caption_detail,
    holdout_pairs=_nested_tuple(fields.holdout_pairs),
    jitter=fields.jitter,
    background_max=fields.background_max,
    background_noise=fields.background_noise,
    supersample=fields.supersample,
    num_test=fields.num_test,
    **given,
  )


def check_sizes(dataset_config: ml_collections.ConfigDict) -> None:
  """The counts of scenes that are not the world's own fields."""
  fields = dataset_config.scenes
  check_number(FIELD + "num_train", fields.num_train, 0, integer=True)
  check_number(FIELD + "num_probe", fields.num_probe, 1, integer=True)
  check_number(FIELD + "epoch_size", fields.epoch_size, 1, integer=True)
  check_number(FIELD + "seed", fields.seed, 0, 2**31 - 1, integer=True)
