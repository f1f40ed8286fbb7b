"""Where a run's training batches come from: one class per data mode, chosen in one place.

A data mode is made in two stages, so that every refusal comes before a run writes anything:

1. :func:`choose_data_mode` picks the mode from the config and the training split and runs
   the mode's checks (the batch against the split, on-device limits, crops and stream
   options against the mode). It is cheap: nothing is put on a device, no worker starts.
2. ``mode.start(training, start_step)``, once the run holds its workdir and knows the step it
   resumes at, builds the batches (device arrays or worker processes) and the compiled
   k-step function; then ``mode.run(k, p_state)`` runs k steps in one dispatch and
   ``mode.close()`` stops what ``start`` started.

The modes:

- :class:`ResidentMode`: the whole training split on every device; the step draws its own
  batch (:mod:`modgap_jax.data.resident`). ``dataset.on_device = 'yes'``, or ``'auto'`` for an
  in-memory split that fits in ``RESIDENT_LIMIT_BYTES``.
- :class:`StreamedMode`: host batches from grain workers (:func:`data.grain_train_batches`),
  stacked k at a time. ``dataset.on_device = 'no'``, or ``'auto'`` for a lazily read or
  large split, and always with ``dataset.crop_scale``.
- :class:`ScenesMode`: ``dataset.name = 'scenes'`` with the world's own word tokenizer: the
  step renders and captions its batch itself (:func:`modgap_jax.data.scenes.device_batch`),
  from an unbounded stream or a fixed pool. With another tokenizer the pool
  (``dataset.scenes.num_train > 0``) is materialised once and trained as a resident split.

A new mode is one subclass of :class:`DataMode` and one branch of :func:`choose_data_mode`.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any

import flax.jax_utils
import jax
import ml_collections
import numpy as np
import optax

from modgap_jax import data, temperature
from modgap_jax import train_step as train_step_lib
from modgap_jax.data import resident, scenes
from modgap_jax.errors import ConfigError, check_choice

# A train split up to this size (images + tokens, per device) is kept on the devices.
RESIDENT_LIMIT_BYTES = 2 << 30
ON_DEVICE_CHOICES = ("auto", "yes", "no")


@dataclasses.dataclass(frozen=True)
class Training:
  """What a data mode's compiled steps train: the model, its optimizer and temperature spec."""

  model: Any
  tx: optax.GradientTransformation
  spec: temperature.TemperatureSpec


class DataMode(abc.ABC):
  """A run's source of training batches (see the module docstring for its two stages).

  Attributes:
    name: the mode's name, for reports ('resident', 'streamed').
    examples_per_epoch: the images one epoch visits: the step plan's epoch
      (``steps_per_epoch = examples_per_epoch // batch_size``).
  """

  name: str
  examples_per_epoch: int

  def __init__(self):
    self._steps: train_step_lib.MultiStep | None = None

  @abc.abstractmethod
  def start(self, training: Training, start_step: int) -> None:
    """Builds the batches from ``start_step`` on, and the k-step function that consumes them."""

  @abc.abstractmethod
  def run(self, num_steps: int, p_state: Any) -> tuple[Any, dict[str, jax.Array]]:
    """Runs ``num_steps`` steps in one dispatch; returns the new state and [D, k] logs."""

  def close(self) -> None:
    """Stops what :meth:`start` started (nothing by default)."""

  @property
  def compile_seconds(self) -> float:
    """Seconds spent compiling the k-step function so far."""
    return 0.0 if self._steps is None else self._steps.compile_seconds


class ResidentMode(DataMode):
  """The training split on every device; step s draws its batch there (``resident.device_batch``)."""

  name = "resident"

  def __init__(self, config: ml_collections.ConfigDict, train_split: data.Examples, stream: data.TrainStream):
    super().__init__()
    self._config, self._split, self._stream = config, train_split, stream
    self.examples_per_epoch = check_batch_fits(config, train_split, stream)
    self._sampling = resident.Sampling(
      len(train_split),
      stream.global_batch_size,
      stream.mean,
      stream.std,
      resident.Augment(config.dataset.augment_min_scale),
    )
    self._inputs = None

  def start(self, training: Training, start_step: int) -> None:
    del start_step  # the step reads it from the state
    stream = self._stream
    split = resident.make_resident_split(
      self._split,
      stream.tokenizer,
      image_size=stream.image_size,
      context_length=stream.context_length,
      seed=stream.seed,
      mismatch_fraction=self._config.dataset.mismatch_fraction,
    )
    self._inputs = flax.jax_utils.replicate((split, resident.data_key(stream.seed)))
    self._steps = train_step_lib.make_resident_multistep(
      training.model, training.tx, training.spec.reparam, self._config.swap, self._sampling, self._config.nonfinite
    )

  def run(self, num_steps, p_state):
    return self._steps.run(num_steps, p_state, *self._inputs)


class StreamedMode(DataMode):
  """Host batches made by grain workers, k of them stacked per dispatch."""

  name = "streamed"

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    train_split: data.Examples,
    stream: data.TrainStream,
    *,
    buffer_size: int,
  ):
    super().__init__()
    check_stream_options(config)
    self.examples_per_epoch = check_batch_fits(config, train_split, stream)
    self._config, self._split, self._stream = config, train_split, stream
    self._buffer_size = buffer_size
    self._batches = None

  def start(self, training: Training, start_step: int) -> None:
    # grain makes the same batches as data.train_batches, step for step, in worker
    # processes: JPEG decoding and resizing of a lazily read split stay off this thread.
    self._batches = data.grain_train_batches(
      self._split,
      self._stream,
      start_step,
      num_workers=input_workers(self._config, self._split),
      buffer_size=self._buffer_size,
    )
    self._steps = train_step_lib.make_streamed_multistep(
      training.model, training.tx, training.spec.reparam, self._config.swap, self._config.nonfinite
    )

  def run(self, num_steps, p_state):
    # [D, b, ...] per step → [D, k, b, ...]: the scan runs over axis 1 on each device.
    host = [next(self._batches) for _ in range(num_steps)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *host)
    return self._steps.run(num_steps, p_state, stacked)

  def close(self) -> None:
    if hasattr(self._batches, "close"):
      self._batches.close()


class ScenesMode(DataMode):
  """The scenes world, drawn inside the step: batch s is a pure function of (config.seed, s)."""

  name = "scenes"

  def __init__(self, config: ml_collections.ConfigDict, world: scenes.SceneWorld, stream: data.TrainStream):
    super().__init__()
    check_generated_options(config)
    num_train = scenes.check_num_train(config.dataset.scenes.num_train, stream.global_batch_size)
    self.examples_per_epoch = num_train or int(config.dataset.scenes.epoch_size)
    self._config, self._stream = config, stream
    self._draw = scenes.stream_draw(world, stream, num_train=num_train, axis_name=train_step_lib.AXIS)

  def start(self, training: Training, start_step: int) -> None:
    del start_step  # the step reads it from the state
    self._steps = train_step_lib.make_device_drawn_multistep(
      training.model, training.tx, training.spec.reparam, self._config.swap, self._draw, self._config.nonfinite
    )

  def run(self, num_steps, p_state):
    return self._steps.run(num_steps, p_state)


def check_generated_options(config: ml_collections.ConfigDict) -> None:
  """Options of stored images that a generated world does not have are refused, by name."""
  for field, value, off in (
    ("dataset.crop_scale", tuple(config.dataset.crop_scale), ()),
    ("dataset.mismatch_fraction", config.dataset.mismatch_fraction, 0.0),
    ("dataset.augment_min_scale", config.dataset.augment_min_scale, 1.0),
  ):
    if value != off:
      raise ConfigError(
        f"{field}={value!r} applies to stored images; the scenes world draws fresh scenes on the "
        f"devices (set {field}={off!r}, or use dataset.scenes.num_train for a fixed pool)"
      )


def choose_data_mode(
  config: ml_collections.ConfigDict, train_split: data.Examples, stream: data.TrainStream, *, steps_per_dispatch: int
) -> DataMode:
  """The run's data mode, its checks done (``dataset.on_device``: auto, yes or no).

  Args:
    config: the run's config, checked by ``run_setup.check_config``.
    train_split: the run's training split.
    stream: the spec of its training batches, with its tokenizer.
    steps_per_dispatch: steps per dispatch (a streamed mode keeps two dispatches ready).
  """
  if config.dataset.name == scenes.NAME and config.dataset.tokenizer == "words":
    return ScenesMode(config, scenes.world_from_config(config.dataset, config.model.image_size), stream)
  if use_resident(config, train_split):
    return ResidentMode(config, train_split, stream)
  return StreamedMode(config, train_split, stream, buffer_size=2 * steps_per_dispatch)


def use_resident(config: ml_collections.ConfigDict, split: data.Examples) -> bool:
  """Whether the train split goes on the devices: 'yes', or 'auto' on an in-memory split that fits."""
  mode = config.dataset.on_device
  if config.dataset.crop_scale:  # random-resized crops are made by the host stream
    return False
  if mode == "no":
    return False
  in_memory = isinstance(split, data.InMemoryExamples)
  if mode == "yes" and not in_memory:
    raise ConfigError(f"dataset.on_device='yes' needs an in-memory split; {config.dataset.name!r} is read lazily")
  side = config.model.image_size
  approx_bytes = len(split) * (side * side * 3 + 4 * 4 * config.model.context_length)
  return mode == "yes" or (in_memory and approx_bytes <= RESIDENT_LIMIT_BYTES)


def check_on_device(config: ml_collections.ConfigDict) -> None:
  """The data-free part of the mode's checks: ``dataset.on_device`` and what each choice allows."""
  check_choice("dataset.on_device", config.dataset.on_device, ON_DEVICE_CHOICES)
  resident.Augment(config.dataset.augment_min_scale)
  resident.check_mismatch_fraction(config.dataset.mismatch_fraction)
  if config.dataset.crop_scale and config.dataset.on_device == "yes":
    raise ConfigError("dataset.crop_scale needs the streamed pipeline; set dataset.on_device='no' or 'auto'")
  if config.dataset.on_device == "no":
    check_stream_options(config)


def check_batch_fits(config: ml_collections.ConfigDict, split: data.Examples, stream: data.TrainStream) -> int:
  """The split's size, once a global batch is known to fit in it (a step takes distinct images)."""
  if stream.global_batch_size > len(split):
    raise ConfigError(
      f"batch_size={stream.global_batch_size} exceeds the {len(split)} examples of "
      f"{config.dataset.name}:{config.dataset.train_split}"
    )
  return len(split)


def check_stream_options(config: ml_collections.ConfigDict) -> None:
  """The on-device options a streamed mode cannot honour are refused."""
  if config.dataset.mismatch_fraction or config.dataset.augment_min_scale < 1.0:
    raise ConfigError(
      "dataset.mismatch_fraction and dataset.augment_min_scale need the on-device split "
      "(dataset.on_device='auto' or 'yes' on a dataset that fits)"
    )


def input_workers(config: ml_collections.ConfigDict, split: data.Examples) -> int:
  """``dataset.num_workers``, with -1 resolved: a worker per core (up to 8) for a lazily read
  split, none for one already in memory (threads suffice to resize it)."""
  workers = int(config.dataset.num_workers)
  if workers >= 0:
    return workers
  return 0 if isinstance(split, data.InMemoryExamples) else min(os.cpu_count() or 1, 8)
