"""Tests of the scenes world (modgap_jax.data.scenes) and the word tokenizer.

References are independent of the code under test: shapes are point-in-polygon tests
(matplotlib's Path) or distances in float64 NumPy, object centres come from the documented
formula, frequencies are checked with SciPy's χ², binomial and Kolmogorov-Smirnov tests,
and captions are read back by the parser and the host tokenizer.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.path import Path
from scipy import stats

from modgap_jax import data
from modgap_jax.data import scenes, text
from modgap_jax.data.scenes import rendering
from modgap_jax.data.scenes.world import ATTRIBUTES, POSITIONS
from modgap_jax.errors import ConfigError

P_MIN = 1e-3  # Smallest p-value a frequency test accepts: fails a correct sampler 1 time in 1000.
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
WHITE = (("white", (255, 255, 255)),)


def make_scene(world, objects, background=(0.0, 0.0, 0.0)):
  """A Scenes pytree of one scene: objects are (shape name, size, cell, jitter, colour) tuples."""
  kinds, sizes, cells, jitters, colours = zip(*objects)
  row = lambda values, dtype=jnp.int32: jnp.asarray([values], dtype)
  return scenes.Scenes(
    present=jnp.ones((1, len(objects)), bool),
    shape=row([world.shapes.index(k) for k in kinds]),
    colour=row(colours),
    size=row(sizes),
    cell=row(cells),
    jitter=row(jitters, jnp.float32),
    named=jnp.ones((1, len(objects), 4), bool),
    template=jnp.zeros(1, jnp.int32),
    background=row(background, jnp.float32),
    noise_key=jnp.zeros((1, 2), jnp.uint32),
  )


# ------------------------------------------------------------------ rendering


def reference_polygon(kind):
  """Vertices (u, v) of the polygon shapes in the unit frame, v down, as the docs define them."""
  w, h = rendering.CROSS_HALF_WIDTH, rendering.SQUARE_HALF
  top, base = rendering.TRIANGLE_TOP, rendering.TRIANGLE_BASE
  return {
    "square": [(-h, -h), (h, -h), (h, h), (-h, h)],
    "triangle": [(0, top), (1, base), (-1, base)],
    "diamond": [(1, 0), (0, 1), (-1, 0), (0, -1)],
    "cross": [
      (-w, -1),
      (w, -1),
      (w, -w),
      (1, -w),
      (1, w),
      (w, w),
      (w, 1),
      (-w, 1),
      (-w, w),
      (-1, w),
      (-1, -w),
      (-w, -w),
    ],
  }[kind]


def reference_coverage(kind, centre, radius, side, n):
  """float64 [side, side]: the share of each pixel's n × n samples inside the shape."""
  t = (np.arange(side * n) + 0.5) / n
  x, y = np.meshgrid(t, t)
  u, v = (x - centre[0]) / radius, (y - centre[1]) / radius
  if kind == "circle":
    inside = np.hypot(u, v) <= 1
  elif kind == "ring":
    inside = (np.hypot(u, v) <= 1) & (np.hypot(u, v) >= rendering.RING_INNER)
  else:
    inside = Path(reference_polygon(kind)).contains_points(np.stack([u.ravel(), v.ravel()], 1)).reshape(u.shape)
  return inside.reshape(side, n, side, n).mean(axis=(1, 3))


def reference_centre(world, size, cell, jitter):
  """The documented centre in pixels: S · ((col, row) + 1/2) / 3 + S · jitter · (1/6 − ρ)."""
  row, col = divmod(cell, 3)
  rho = world.sizes[size][1]
  return world.image_size * ((np.array([col, row]) + 0.5) / 3 + world.jitter * np.array(jitter) * (1 / 6 - rho))


AREAS = {  # Closed-form areas in units of r².
  "circle": np.pi,
  "ring": np.pi * (1 - rendering.RING_INNER**2),
  "square": (2 * rendering.SQUARE_HALF) ** 2,
  "triangle": rendering.TRIANGLE_BASE - rendering.TRIANGLE_TOP,
  "cross": 8 * rendering.CROSS_HALF_WIDTH - (2 * rendering.CROSS_HALF_WIDTH) ** 2,
  "diamond": 2.0,
}
PLACES = ((4, (0.3, -0.7)), (0, (-1.0, 1.0)), (8, (0.9, 0.2)), (5, (0.0, 0.0)))


@pytest.mark.parametrize("side,supersample,area_tolerance", [(32, 4, 0.06), (64, 8, 0.025)])
def test_each_shape_matches_reference_coverage(side, supersample, area_tolerance):
  world = scenes.SceneWorld(image_size=side, colours=WHITE, background_max=0.0, max_objects=1, supersample=supersample)
  for kind in world.shapes:
    for size in range(len(world.sizes)):
      for cell, jitter in PLACES:
        image = np.asarray(rendering.render_float(world, make_scene(world, [(kind, size, cell, jitter, 0)])))[0]
        radius = world.sizes[size][1] * side
        ref = reference_coverage(kind, reference_centre(world, size, cell, jitter), radius, side, supersample)
        where = f"{kind} size {size} cell {cell}"
        np.testing.assert_allclose(image, np.repeat(ref[..., None], 3, -1), atol=1e-6, err_msg=where)
        # The same samples, so coverage is exact; its area approaches the closed form.
        area = AREAS[kind] * radius**2
        assert abs(image[..., 0].sum() - area) <= area_tolerance * area, where


def test_painting_order_colours_and_quantisation():
  background = np.array([0.1, 0.05, 0.15])
  # A cross, then one in the next cell, both as large as a cell allows: they share the
  # pixels on the border of their cells, where the order of painting matters.
  objects = [("cross", 1, 4, (1.0, 0.0), 2), ("cross", 1, 5, (-1.0, 0.0), 6)]
  world = scenes.SceneWorld(max_objects=2, min_objects=2, sizes=(("small", 0.1), ("large", 0.1666)), jitter=1.0)
  scene = make_scene(world, objects, background)
  image = np.asarray(scenes.render(world, scene))[0]
  expected = np.broadcast_to(background, (32, 32, 3)).astype(np.float64)
  alphas = []
  for kind, size, cell, jitter, colour in objects:
    alpha = reference_coverage(kind, reference_centre(world, size, cell, jitter), world.sizes[size][1] * 32, 32, 4)
    rgb = np.array(world.colours[colour][1]) / 255
    expected = expected * (1 - alpha[..., None]) + rgb * alpha[..., None]
    alphas.append(alpha)
  assert np.any((alphas[0] > 0) & (alphas[1] > 0))
  assert image.dtype == np.uint8
  assert np.abs(image.astype(int) - np.round(expected * 255)).max() <= 1


def test_background_noise_is_seeded_and_has_its_std():
  world = scenes.SceneWorld(background_noise=0.05, min_objects=1, max_objects=1, background_max=0.3)
  drawn = scenes.draw_scenes(world, 3, "train", np.arange(64))
  images = np.asarray(rendering.render_float(world, drawn))
  again = np.asarray(rendering.render_float(world, scenes.draw_scenes(world, 3, "train", np.arange(64))))
  np.testing.assert_array_equal(images, again)
  # Far from the one object (the top left pixel block is empty unless the object's cell is 0).
  empty = np.asarray(drawn.cell[:, 0]) != 0
  residual = images[empty, :3, :3] - np.asarray(drawn.background)[empty, None, None]
  assert abs(residual.std() - 0.05) < 0.005 and abs(residual.mean()) < 0.005


# ------------------------------------------------------------------ determinism


def test_scenes_are_pure_functions_of_seed_split_and_index():
  world = scenes.SceneWorld()
  draw = scenes.draw_scenes
  all_ten = draw(world, 7, "train", jnp.arange(10))
  again = draw(world, 7, "train", jnp.arange(10))
  picked = draw(world, 7, "train", jnp.array([9, 2, 5]))
  jax.tree.map(np.testing.assert_array_equal, all_ten, again)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a)[[9, 2, 5]], b), all_ten, picked)
  # Another seed or split is another stream; an integer seed is the key PRNGKey(seed).
  assert not np.array_equal(draw(world, 8, "train", jnp.arange(10)).shape, all_ten.shape)
  assert not np.array_equal(draw(world, 7, "test", jnp.arange(10)).cell, all_ten.cell)
  from_key = draw(world, jax.random.PRNGKey(7), "train", jnp.arange(10))
  jax.tree.map(np.testing.assert_array_equal, all_ten, from_key)


@functools.cache
def _batch_fns(world, global_batch, num_train):
  kwargs = dict(context_length=24, num_train=num_train)
  single = jax.jit(lambda step: scenes.device_batch(world, 11, step, global_batch, MEAN, STD, **kwargs))
  pmapped = jax.pmap(
    lambda step: scenes.device_batch(world, 11, step, global_batch, MEAN, STD, axis_name="b", **kwargs), axis_name="b"
  )
  return single, pmapped


@pytest.mark.parametrize("num_train", [0, 20])
def test_device_batch_same_on_1_and_4_devices_and_on_resume(num_train):
  world, global_batch, devices = scenes.SceneWorld(), 8, 4
  assert jax.local_device_count() == devices  # conftest's emulated CPUs
  single, pmapped = _batch_fns(world, global_batch, num_train)
  for step in (0, 3, 6):
    one = single(jnp.int32(step))
    four = pmapped(jnp.full((devices,), step, jnp.int32))
    for key in ("image", "text"):
      np.testing.assert_array_equal(np.asarray(four[key]).reshape(one[key].shape), one[key])

  # A run of steps 0..7 in one scan against steps 5..7 computed alone (a resumed run).
  def run(carry, step):
    return carry, single(step)

  _, whole = jax.lax.scan(run, 0, jnp.arange(8, dtype=jnp.int32))
  for step in (5, 6, 7):
    alone = single(jnp.int32(step))
    for key in ("image", "text"):
      np.testing.assert_array_equal(whole[key][step], alone[key])


def test_device_batch_is_the_documented_scenes():
  world, global_batch = scenes.SceneWorld(), 8
  single, _ = _batch_fns(world, global_batch, 0)
  step = 3
  batch = single(jnp.int32(step))
  drawn = scenes.draw_scenes(world, 11, "train", step * global_batch + np.arange(global_batch))
  expected = (np.asarray(scenes.render(world, drawn)) / 255.0 - np.array(MEAN)) / np.array(STD)
  np.testing.assert_allclose(batch["image"], expected, atol=1e-5)
  np.testing.assert_array_equal(batch["text"], scenes.caption_tokens(world, drawn, 24))


def test_fixed_pool_visits_each_scene_once_per_epoch():
  num_train, global_batch = 20, 8  # 2 steps per epoch; 4 of the 20 are left out each epoch
  slots = jnp.arange(global_batch)
  seen = [np.asarray(scenes.train_indices(11, s, global_batch, slots, num_train)) for s in range(6)]
  for epoch in range(3):
    visited = np.concatenate(seen[2 * epoch : 2 * epoch + 2])
    assert len(set(visited.tolist())) == 16 and visited.max() < num_train
  assert not np.array_equal(seen[0], seen[2])  # Each epoch has its own order.
  unbounded = [np.asarray(scenes.train_indices(11, s, global_batch, slots)) for s in range(3)]
  np.testing.assert_array_equal(np.concatenate(unbounded), np.arange(24))
  with pytest.raises(ConfigError, match="dataset.scenes.num_train"):
    scenes.check_num_train(5, global_batch)


# ------------------------------------------------------------------ frequencies


def _uniform_chisquare(values, categories):
  counts = np.bincount(np.asarray(values).ravel(), minlength=categories)
  assert len(counts) == categories
  return stats.chisquare(counts).pvalue


def test_attribute_frequencies():
  holdout = (("red", "circle"), ("blue", "ring"), ("cyan", "triangle"))
  world = scenes.SceneWorld(min_objects=1, max_objects=3, caption_detail=0.3, holdout_pairs=holdout)
  drawn = jax.tree.map(np.asarray, scenes.draw_scenes(world, 5, "train", np.arange(4096)))
  present = drawn.present
  counts = present.sum(1)
  assert np.all(present == (np.arange(3) < counts[:, None]))  # Present objects come first.
  assert _uniform_chisquare(counts - 1, 3) > P_MIN
  assert _uniform_chisquare(drawn.size[present], 2) > P_MIN
  assert _uniform_chisquare(drawn.cell[present], 9) > P_MIN
  assert _uniform_chisquare(drawn.template, len(world.templates)) > P_MIN
  # (colour, shape) pairs: uniform over the 45 allowed ones, never a held-out one.
  pair = drawn.colour[present] * len(world.shapes) + drawn.shape[present]
  pair_counts = np.bincount(pair, minlength=48)
  held = [world.colour_names.index(c) * len(world.shapes) + world.shapes.index(s) for c, s in holdout]
  assert pair_counts[held].sum() == 0
  assert stats.chisquare(np.delete(pair_counts, held)).pvalue > P_MIN
  # Cells are distinct within a scene.
  for row, n in zip(drawn.cell, counts):
    assert len(set(row[:n].tolist())) == n
  # Naming: each attribute of each present object with probability caption_detail.
  for a, name in enumerate(ATTRIBUTES):
    named = drawn.named[..., a][present]
    assert stats.binomtest(int(named.sum()), named.size, 0.3).pvalue > P_MIN, name
  assert stats.kstest(drawn.jitter[present].ravel(), stats.uniform(-1, 2).cdf).pvalue > P_MIN
  assert stats.kstest(drawn.background.ravel() / 0.2, stats.uniform.cdf).pvalue > P_MIN


def test_test_split_draws_every_pair_including_held_out_ones():
  holdout = (("red", "circle"), ("blue", "ring"))
  world = scenes.SceneWorld(max_objects=1, holdout_pairs=holdout)
  drawn = jax.tree.map(np.asarray, scenes.draw_scenes(world, 5, "test", np.arange(4096)))
  pair = drawn.colour[:, 0] * len(world.shapes) + drawn.shape[:, 0]
  assert stats.chisquare(np.bincount(pair, minlength=48)).pvalue > P_MIN


# ------------------------------------------------------------------ captions


def _expected_objects(world, drawn, row):
  objects = []
  for k in range(int(drawn.present[row].sum())):
    named = drawn.named[row, k]
    objects.append(
      {
        "size": world.size_names[drawn.size[row, k]] if named[0] else None,
        "colour": world.colour_names[drawn.colour[row, k]] if named[1] else None,
        "shape": world.shapes[drawn.shape[row, k]] if named[2] else None,
        "position": POSITIONS[drawn.cell[row, k]][0] if named[3] else None,
      }
    )
  return objects


@pytest.mark.parametrize("detail", [0.5, 1.0, 0.0])
def test_captions_say_what_the_scene_shows(detail):
  world = scenes.SceneWorld(min_objects=1, max_objects=3, caption_detail=detail)
  drawn = jax.tree.map(np.asarray, scenes.draw_scenes(world, 2, "train", np.arange(400)))
  tokens = np.asarray(scenes.caption_tokens(world, drawn, world.max_caption_words + 2))
  strings = scenes.caption_strings(world, tokens)
  for row, caption in enumerate(strings):
    parsed = scenes.parse_caption(world, caption)
    assert parsed["template"] == drawn.template[row], caption
    assert parsed["objects"] == _expected_objects(world, drawn, row), caption
    said = [v for obj in parsed["objects"] for v in obj.values()]
    if detail == 1.0:
      assert None not in said, caption
    if detail == 0.0:
      assert set(said) == {None}, caption
  if detail == 0.5:  # "an" before a vowel: the parser rejects a wrong article, so check it is used.
    assert any(" an orange" in s for s in strings)


@pytest.mark.parametrize("context_length", [64, 12, 2])
def test_device_tokens_equal_host_encoding_of_their_strings(context_length):
  world = scenes.SceneWorld(max_objects=3, caption_detail=0.7)
  drawn = scenes.draw_scenes(world, 4, "train", np.arange(200))
  full = scenes.caption_strings(world, scenes.caption_tokens(world, drawn, world.max_caption_words + 2))
  device = np.asarray(scenes.caption_tokens(world, drawn, context_length))
  host = world.tokenizer().encode(full, context_length)
  np.testing.assert_array_equal(device, host)  # The same ids, layout and truncation.
  assert device.dtype == np.int32 and np.all(device.argmax(-1) == (device != 0).sum(-1) - 1)  # EOT is the max.
  assert max(len(s.split()) for s in full) <= world.max_caption_words


def test_parser_rejects_what_the_world_cannot_say():
  world = scenes.SceneWorld()
  assert scenes.parse_caption(world, "A  picture of an orange SHAPE")["objects"] == [
    {"size": None, "colour": "orange", "shape": None, "position": None}
  ]
  for bad in ("a orange circle", "a red hexagon", "a red circle at the middle", "a picture of", "red circle"):
    with pytest.raises(ValueError):
      scenes.parse_caption(world, bad)


# ------------------------------------------------------------------ splits and zero-shot


def test_make_examples_matches_the_stream_and_chunking():
  world = scenes.SceneWorld(num_test=10)
  examples = scenes.make_examples(world, 3, "test", batch=4)
  assert len(examples) == 10 and examples.class_names == {"shape": world.shapes, "colour": world.colour_names}
  drawn = scenes.draw_scenes(world, 3, "test", np.arange(10))
  images, captions = examples.fetch(np.arange(10), 32)
  np.testing.assert_array_equal(images, scenes.render(world, drawn))
  tokens = scenes.caption_tokens(world, drawn, world.max_caption_words + 2)
  assert captions == [[c] for c in scenes.caption_strings(world, tokens)]
  labels = examples.labels()
  np.testing.assert_array_equal(labels["shape"], drawn.shape[:, 0])
  np.testing.assert_array_equal(labels["colour"], drawn.colour[:, 0])
  later = scenes.make_examples(world, 3, "train", 3, first=6, batch=4)
  np.testing.assert_array_equal(
    later.fetch(np.arange(3), 32)[0], scenes.make_examples(world, 3, "train", 9, batch=4).fetch(np.arange(6, 9), 32)[0]
  )


@pytest.mark.parametrize("label_key", ["shape", "colour"])
def test_zero_shot_prompts_name_one_attribute_in_the_world_vocabulary(label_key):
  world = scenes.SceneWorld()
  classnames, templates = scenes.zero_shot_classes(world, label_key)
  names = world.shapes if label_key == "shape" else world.colour_names
  assert len(classnames) == len(names) and len(templates) == len(world.templates)
  tokenizer = world.tokenizer()
  for k, classname in enumerate(classnames):
    for t, template in enumerate(templates):
      prompt = template.format(classname)
      assert text.words.UNK_ID not in tokenizer.encode(prompt, 32), prompt
      parsed = scenes.parse_caption(world, prompt)
      assert parsed["template"] == t
      said = {key: value for key, value in parsed["objects"][0].items() if value is not None}
      assert parsed["objects"][1:] == [] and said == {label_key: names[k]}, prompt
  with pytest.raises(ConfigError, match="dataset.zero_shot_label"):
    scenes.zero_shot_classes(world, "size")


def test_plot_scene_grid_smoke(tmp_path):
  from modgap_jax.plots.scenes import plot_scene_grid

  world = scenes.SceneWorld()
  drawn = scenes.draw_scenes(world, 0, "train", np.arange(4))
  path = tmp_path / "grid.png"
  plot_scene_grid(np.asarray(scenes.render(world, drawn)), ["a"] * 4, str(path), columns=2)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ config


BAD_FIELDS = [
  (dict(image_size=8), "image_size"),
  (dict(image_size=32.0), "image_size"),
  (dict(min_objects=0), "min_objects"),
  (dict(max_objects=10), "max_objects"),
  (dict(min_objects=3, max_objects=2), "max_objects"),
  (dict(shapes=("circle", "hexagon")), "shapes"),
  (dict(shapes=()), "shapes"),
  (dict(shapes="circle"), "shapes"),
  (dict(shapes=("ring", "ring")), "shapes"),
  (dict(colours=(("Red", (1, 2, 3)),)), "colours"),
  (dict(colours=(("red", (1, 2)),)), "colours"),
  (dict(colours=(("red", (1, 2, 300)),)), "colours['red']"),
  (dict(colours=(("left", (1, 2, 3)),)), "colours"),
  (dict(sizes=(("small", 0.2),)), "sizes['small']"),
  (dict(sizes=(("small", 0.0),)), "sizes['small']"),
  (dict(sizes=(("red", 0.1),)), "sizes"),
  (dict(templates=("no slot",)), "templates"),
  (dict(templates=("{objects} and {objects}",)), "templates"),
  (dict(templates=("{objects}, here",)), "templates"),
  (dict(caption_detail=1.5), "caption_detail"),
  (dict(caption_detail="all"), "caption_detail"),
  (dict(holdout_pairs=(("red", "hexagon"),)), "holdout_pairs"),
  (dict(holdout_pairs=tuple(("red", s) for s in scenes.SHAPE_KINDS)), "holdout_pairs"),
  (dict(jitter=-0.1), "jitter"),
  (dict(background_max=2.0), "background_max"),
  (dict(background_noise=-1.0), "background_noise"),
  (dict(supersample=0), "supersample"),
  (dict(num_test=0), "num_test"),
]


@pytest.mark.parametrize("fields,name", BAD_FIELDS)
def test_bad_config_fields_are_named(fields, name):
  with pytest.raises(ConfigError) as error:
    scenes.SceneWorld(**fields)
  message = str(error.value)
  assert f"dataset.scenes.{name}" in message and "\n" not in message


def test_world_is_hashable_static_and_normalised():
  world = scenes.SceneWorld(shapes=["circle", "ring"], colours=[["red", [200, 0, 0]], ["blue", [0, 0, 200]]])
  assert world == scenes.SceneWorld(shapes=("circle", "ring"), colours=(("red", (200, 0, 0)), ("blue", (0, 0, 200))))
  assert hash(world) == hash(scenes.SceneWorld(shapes=("circle", "ring"), colours=world.colours))
  assert set(world.vocabulary) >= {"red", "blue", "circle", "ring", "shape", "and", "an", "center", "picture"}
  assert "square" not in world.vocabulary


# ------------------------------------------------------------------ word tokenizer


def test_word_tokenizer_layout_json_and_unknown_words():
  tok = text.WordTokenizer(["blue", "a", "circle", "."])
  assert (tok.vocab_size, tok.sot_id, tok.eot_id) == (8, 6, 7)
  ids = tok.encode(["A blue circle.", "a green circle", "a blue circle a blue circle"], 6)
  np.testing.assert_array_equal(ids[0], [6, 3, 2, 4, 5, 7])
  np.testing.assert_array_equal(ids[1], [6, 3, 1, 4, 7, 0])  # 'green' is unknown
  np.testing.assert_array_equal(ids[2], [6, 3, 2, 4, 3, 7])  # truncated, EOT kept last
  assert tok.decode(ids[:2]) == ["a blue circle .", "a <unk> circle"]
  again = text.from_json(tok.to_json())
  assert again == tok and hash(again) == hash(tok) and again != text.WordTokenizer(["a", "blue"])
  assert data.tokenizer_from_json(tok.to_json()) == tok
  for bad in ('{"kind": "words", "version": 1}', '{"kind": "words", "version": 1, "words": "abc"}', "[1]"):
    with pytest.raises(ConfigError):
      text.from_json(bad)
  for words in ([], ["a", "a"], ["two words"], ["Upper"], [3]):
    with pytest.raises(ConfigError):
      text.WordTokenizer(words)


def test_make_tokenizer_words_keeps_the_most_frequent():
  captions = ["a red circle", "a red ring", "a blue ring", "a ring"]
  tok = text.make_tokenizer("words", captions, 7)  # room for 3 words: a (4), ring (3), red (2)
  assert tok.words == ("a", "red", "ring")
  assert text.make_tokenizer("words", captions[::-1], 7) == tok
  assert text.make_tokenizer("words", captions, 100).words == ("a", "blue", "circle", "red", "ring")
  with pytest.raises(ConfigError, match="vocab_size"):
    text.make_tokenizer("words", captions, 4)
  assert json.loads(tok.to_json())["kind"] == "words" and "words" in text.TOKENIZER_KINDS


def test_world_tokenizer_is_the_words_of_its_captions():
  world = scenes.SceneWorld(caption_detail=0.5)
  examples = scenes.make_examples(world, 0, "train", 600)
  learned = text.make_tokenizer("words", [c for caps in examples.captions() for c in caps], 1000)
  assert learned == world.tokenizer()  # every word is used, and both sort them
