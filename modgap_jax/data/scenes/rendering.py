"""Rendering scenes: antialiased shapes, painted in order over a dark background.

Geometry, in pixels with x to the right and y down; pixel (row i, column j) covers
[j, j + 1] × [i, i + 1]. An object of radius fraction ρ (its size) in cell (row, col) has
radius r = ρ·S and centre::

  c = S · ((col + 1/2) / 3 + jitter_x · m,  (row + 1/2) / 3 + jitter_y · m),
  m = world.jitter · (1/6 − ρ)

so it never leaves its cell, and objects (in distinct cells) never overlap. Each shape is a
set in the object's unit frame (u, v) = (p − c) / r, inside [-1, 1]² (:func:`inside`).

Antialiasing: a pixel's coverage α is the share of its ``supersample``² sub-pixel samples,
at offsets ((a + 1/2) / n, (b + 1/2) / n), that fall inside the shape; the colour is
``(1 − α) · below + α · rgb``. Coverage is computed only in a window of W × W pixels around
each object (W = 2·⌈max r⌉ + 2 holds any object), which makes rendering about
(S / W)² times cheaper than sampling the whole image per object.

The background is the scene's colour plus, if ``background_noise`` > 0, Gaussian noise of
that std per pixel and channel. Images are quantised to uint8 as ``round(255 · x)`` of x
clipped to [0, 1], so what the step trains on is what a saved split holds.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from modgap_jax.data.scenes.sample import Scenes
from modgap_jax.data.scenes.world import GRID, SHAPE_KINDS, SceneWorld

RING_INNER = 0.45  # Inner radius of a ring, a share of its outer radius.
SQUARE_HALF = 0.82  # Half side of a square: its area is close to a circle's.
CROSS_HALF_WIDTH = 0.32  # Half width of a cross's bars.
TRIANGLE_TOP, TRIANGLE_BASE = -0.9, 0.9  # An upward isosceles triangle of base 2.


def inside(kind: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
  """Whether (u, v) (unit frame, v down) lies in shape ``kind`` (an index into SHAPE_KINDS).

  circle  u² + v² ≤ 1;              ring    RING_INNER² ≤ u² + v² ≤ 1;
  square  max(|u|, |v|) ≤ SQUARE_HALF;
  triangle  apex (0, TRIANGLE_TOP), base corners (±1, TRIANGLE_BASE):
            v ≤ TRIANGLE_BASE and |u| · (TRIANGLE_BASE − TRIANGLE_TOP) ≤ v − TRIANGLE_TOP;
  cross   max(|u|, |v|) ≤ 1 and min(|u|, |v|) ≤ CROSS_HALF_WIDTH;
  diamond |u| + |v| ≤ 1.
  """
  au, av = jnp.abs(u), jnp.abs(v)
  d2 = u * u + v * v
  hi, lo = jnp.maximum(au, av), jnp.minimum(au, av)
  shapes = {
    "circle": d2 <= 1.0,
    "ring": (d2 <= 1.0) & (d2 >= RING_INNER**2),
    "square": hi <= SQUARE_HALF,
    "triangle": (v <= TRIANGLE_BASE) & (au * (TRIANGLE_BASE - TRIANGLE_TOP) <= v - TRIANGLE_TOP),
    "cross": (hi <= 1.0) & (lo <= CROSS_HALF_WIDTH),
    "diamond": au + av <= 1.0,
  }
  result = shapes[SHAPE_KINDS[0]]
  for k, name in enumerate(SHAPE_KINDS[1:], start=1):
    result = jnp.where(kind == k, shapes[name], result)
  return result


def geometry(world: SceneWorld, scenes: Scenes) -> tuple[jax.Array, jax.Array]:
  """Object centres float32 [n, K, 2] (x, y) and radii float32 [n, K], in pixels."""
  side = world.image_size
  radius = jnp.asarray(world.radii)[scenes.size]
  room = world.jitter * jnp.maximum(0.0, 1.0 / (2 * GRID) - radius)
  row, col = jnp.divmod(scenes.cell, GRID)
  centre = (jnp.stack([col, row], axis=-1) + 0.5) / GRID + scenes.jitter * room[..., None]
  return centre * side, radius * side


def window_size(world: SceneWorld) -> int:
  """W = 2·⌈max r⌉ + 2 pixels: holds an object of any size wherever its centre falls."""
  return min(world.image_size, 2 * math.ceil(float(world.radii.max()) * world.image_size) + 2)


def coverage(world: SceneWorld, kind, centre, radius) -> tuple[jax.Array, jax.Array]:
  """One object's coverage α float32 [W, W] and the window's top-left pixel int32 (x, y)."""
  n, w = world.supersample, window_size(world)
  corner = jnp.clip(jnp.floor(centre).astype(jnp.int32) - w // 2, 0, world.image_size - w)
  offsets = (jnp.arange(w * n, dtype=jnp.float32) + 0.5) / n  # Sample positions in the window.
  u = (corner[0] + offsets - centre[0]) / radius
  v = (corner[1] + offsets - centre[1]) / radius
  samples = inside(kind, u[None, :], v[:, None]).astype(jnp.float32)
  return samples.reshape(w, n, w, n).mean(axis=(1, 3)), corner


@functools.partial(jax.jit, static_argnames="world")
def render_float(world: SceneWorld, scenes: Scenes) -> jax.Array:
  """float32 [n, S, S, 3], before quantisation; see the module doc. Jitted, ``world`` static."""
  side = world.image_size
  kinds = jnp.asarray([SHAPE_KINDS.index(s) for s in world.shapes], jnp.int32)[scenes.shape]
  centre, radius = geometry(world, scenes)
  alpha, corner = jax.vmap(jax.vmap(lambda *a: coverage(world, *a)))(kinds, centre, radius)
  alpha = alpha * scenes.present[..., None, None]
  rgb = jnp.asarray(world.colour_values)[scenes.colour]

  def one(background, noise_key, alpha, corner, rgb):
    image = jnp.broadcast_to(background, (side, side, 3))
    if world.background_noise > 0:
      image = image + world.background_noise * jax.random.normal(noise_key, (side, side, 3))
    for k in range(alpha.shape[0]):  # Painted in order: a later object covers an earlier one.
      full = lax.dynamic_update_slice(jnp.zeros((side, side)), alpha[k], (corner[k, 1], corner[k, 0]))[..., None]
      image = image * (1.0 - full) + rgb[k] * full
    return image

  return jax.vmap(one)(scenes.background, scenes.noise_key, alpha, corner, rgb)


def quantise(images: jax.Array) -> jax.Array:
  """float images in [0, 1] -> uint8 ``round(255 · clip(x, 0, 1))``."""
  return jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames="world")
def render(world: SceneWorld, scenes: Scenes) -> jax.Array:
  """uint8 [n, S, S, 3] RGB images of ``scenes``; jitted, ``world`` static."""
  return quantise(render_float(world, scenes))
