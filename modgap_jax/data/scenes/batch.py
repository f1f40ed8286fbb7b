"""The training batches of the scenes world, drawn inside the jitted step.

Global slot j (0 <= j < B) of step s trains on 'train' scene::

  unbounded stream (num_train = 0):  index = s · B + j          (no scene ever repeats)
  fixed pool (num_train = N > 0):    index = order_e[p · B + j], with
                                     e, p = divmod(s, N // B) and
                                     order_e = permutation(fold_in(order key, e), N)

(the last ``N mod B`` scenes of each epoch's order are dropped, as
:func:`modgap_jax.data.resident.device_batch` does). Each device takes its contiguous
share of the global batch, by ``lax.axis_index``, so the batch is the same for any number
of devices, and a run resumed at step s draws exactly what an uninterrupted one does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from modgap_jax.data.scenes import sample
from modgap_jax.data.scenes.captions import caption_tokens
from modgap_jax.data.scenes.rendering import render
from modgap_jax.data.scenes.world import SceneWorld
from modgap_jax.errors import ConfigError, check_number


def check_num_train(num_train: int, global_batch_size: int, field: str = "dataset.scenes.num_train") -> int:
  """``num_train`` is 0 (unbounded) or a pool of at least one global batch."""
  num_train = check_number(field, num_train, 0, 2**31 - 1, integer=True)
  if 0 < num_train < global_batch_size:
    raise ConfigError(f"{field}={num_train} must be 0 (unbounded) or at least the batch size {global_batch_size}")
  return num_train


def train_indices(seed, step: jax.Array, global_batch_size: int, slots: jax.Array, num_train: int = 0) -> jax.Array:
  """uint32 [b]: the 'train' scene indices of global batch slots ``slots`` at ``step``."""
  slots = jnp.asarray(slots).astype(jnp.uint32)
  step = jnp.asarray(step).astype(jnp.uint32)
  if num_train == 0:
    return step * jnp.uint32(global_batch_size) + slots  # Wraps after 2**32 scenes.
  epoch, position = jnp.divmod(step, jnp.uint32(num_train // global_batch_size))
  key = jax.random.fold_in(sample.stream_key(seed, sample.ORDER_STREAM), epoch)
  order = jax.random.permutation(key, num_train).astype(jnp.uint32)
  return order[position * jnp.uint32(global_batch_size) + slots]


def device_batch(
  world: SceneWorld,
  seed,
  step: jax.Array,
  global_batch_size: int,
  mean,
  std,
  *,
  context_length: int,
  num_train: int = 0,
  axis_name: str | None = None,
) -> dict[str, jax.Array]:
  """This device's share of global batch ``step``: float32 images and int32 tokens.

  Call it inside the jitted (and, with ``axis_name``, pmapped) step.

  Args:
    world: the static world.
    seed: the run's data seed (an integer, or a key); it fixes every scene.
    step: the global step (an int32 scalar, traced).
    global_batch_size: B, divisible by the devices on ``axis_name``.
    mean, std: per-channel normalisation, 3 numbers each.
    context_length: token slots L.
    num_train: 0 for the unbounded stream, N > 0 for a fixed pool of N scenes.
    axis_name: the pmapped axis, or None on one device.

  Returns:
    ``{'image': f32 [B/D, S, S, 3] (x / 255 − mean) / std, 'text': int32 [B/D, L]}``.
  """
  num_train = check_num_train(num_train, global_batch_size)
  local = global_batch_size if axis_name is None else global_batch_size // lax.psum(1, axis_name)
  first = 0 if axis_name is None else lax.axis_index(axis_name) * local
  slots = first + jnp.arange(local)
  scenes = sample.draw_scenes(world, seed, "train", train_indices(seed, step, global_batch_size, slots, num_train))
  images = render(world, scenes).astype(jnp.float32)
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return {"image": (images / 255.0 - mean) / std, "text": caption_tokens(world, scenes, context_length)}


def stream_draw(
  world: SceneWorld, stream, *, num_train: int = 0, axis_name: str | None = None
) -> Callable[[jax.Array], dict[str, jax.Array]]:
  """``step -> device_batch(world, stream.seed, step, ...)``: the batches a training stream draws.

  ``stream`` is a :class:`modgap_jax.data.TrainStream` (its seed, global batch size,
  normalisation and context length are read); jit it, or pmap it with ``axis_name``.
  """
  return functools.partial(
    device_batch,
    world,
    stream.seed,
    global_batch_size=stream.global_batch_size,
    mean=tuple(stream.mean),
    std=tuple(stream.std),
    context_length=stream.context_length,
    num_train=num_train,
    axis_name=axis_name,
  )
