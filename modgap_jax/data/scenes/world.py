"""The scenes world's configuration: what can be drawn, and the words that say it.

A scene is 1..K objects on a dark background, each in its own cell of a 3 × 3 grid. An
object has a shape, a colour, a size and a position (its cell, with jitter inside it). Its
caption names each attribute with probability ``caption_detail`` (Schrodi et al.'s
information imbalance), in one of a few paraphrase templates::

  "a picture of a small red circle at the top right and a large blue ring in the center"

Grammar of one object: ``a|an [size] [colour] shape-or-"shape" [position phrase]``; objects
are joined by "and" and the list fills the template's ``{objects}``. "an" goes before a
word that starts with a vowel letter. An unnamed shape reads "shape"; an unnamed size,
colour or position is left out.

:class:`SceneWorld` is frozen and hashable, so it can be a static argument of ``jax.jit``;
every field is checked when it is made (a one-line ConfigError naming
``dataset.scenes.<field>``).
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import ClassVar

import numpy as np

from modgap_jax.data.text.words import WordTokenizer
from modgap_jax.errors import ConfigError, check_number

FIELD = "dataset.scenes."

# Every shape the renderer can draw (modgap_jax.data.scenes.rendering), in its kind order.
SHAPE_KINDS = ("circle", "ring", "square", "triangle", "cross", "diamond")
# Bright and far apart in hue, so each stays distinct against a dark background at 32 px.
DEFAULT_COLOURS = (
  ("red", (235, 45, 45)),
  ("green", (50, 205, 60)),
  ("blue", (55, 105, 255)),
  ("yellow", (250, 230, 40)),
  ("purple", (175, 75, 235)),
  ("orange", (255, 145, 20)),
  ("white", (245, 245, 245)),
  ("cyan", (40, 225, 235)),
)
# Radius as a fraction of the image side; at most 1/6, half a grid cell, so that an object
# never leaves its cell.
DEFAULT_SIZES = (("small", 0.095), ("large", 0.155))
# Cell c = 3 · row + column, row 0 at the top: (name, the phrase a caption says).
POSITIONS = (
  ("top left", "at the top left"),
  ("top", "at the top"),
  ("top right", "at the top right"),
  ("left", "on the left"),
  ("center", "in the center"),
  ("right", "on the right"),
  ("bottom left", "at the bottom left"),
  ("bottom", "at the bottom"),
  ("bottom right", "at the bottom right"),
)
GRID = 3
DEFAULT_TEMPLATES = ("{objects}", "a picture of {objects}", "there is {objects}", "{objects} on a dark background")
SLOT = "{objects}"
GENERIC_SHAPE = "shape"  # What an object whose shape is not named is called.
ARTICLES = ("a", "an")
JOIN = "and"
ATTRIBUTES = ("size", "colour", "shape", "position")
LABEL_KEYS = (
  "shape",
  "colour",
)  # A split's labels: the first object's shape and colour.  # The order of Scenes.named's last axis.
_WORD = re.compile(r"[a-z]+")


def article(word: str) -> str:
  """'an' before a word that starts with a vowel letter, 'a' otherwise."""
  return "an" if word[0] in "aeiou" else "a"


def _tuple(field: str, value, what: str) -> tuple:
  if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
    raise ConfigError(f"{FIELD}{field}={value!r} must be a sequence of {what}")
  value = tuple(value)
  if not value and field != "holdout_pairs":
    raise ConfigError(f"{FIELD}{field}=() must name at least one entry")
  return value


def _word(field: str, name) -> str:
  if not isinstance(name, str) or not _WORD.fullmatch(name):
    raise ConfigError(f"{FIELD}{field}: name {name!r} must be one lower-case word of letters a-z")
  return name


def _distinct(field: str, names) -> None:
  repeated = sorted(n for n, c in Counter(names).items() if c > 1)
  if repeated:
    raise ConfigError(f"{FIELD}{field} repeats {repeated}")


@dataclasses.dataclass(frozen=True)
class SceneWorld:
  """Everything that fixes what a scene can look like and how its caption reads.

  Attributes:
    image_size: side S in pixels (32 by default; 64 for finer shapes), in [16, 512].
    min_objects, max_objects: objects per scene, uniform in [min, max], 1 <= min <= max <= 9.
    shapes: names from :data:`SHAPE_KINDS`; label id k is ``shapes[k]``.
    colours: (name, (r, g, b)) pairs, 0..255; label id k is ``colours[k]``.
    sizes: (name, radius as a fraction of S) pairs, radius in (0, 1/6].
    templates: paraphrases, each with ``{objects}`` once and otherwise lower-case words.
    caption_detail: probability, in [0, 1], that each attribute of each object is named.
    holdout_pairs: (colour, shape) pairs never drawn in the 'train' split ('test' draws
      every pair); each colour and each shape must keep at least one pair in training.
    jitter: share, in [0, 1], of the room left in its cell by which an object's centre moves.
    background_max: each background channel is uniform in [0, background_max] (of 255).
    background_noise: std of per-pixel Gaussian noise on the background (of 255); 0 = none.
      Not free: one Gaussian per pixel and channel took about 10 ms per 128 images at 32 px
      on 2 CPU cores, against about 1.3 ms for the rest of the batch.
    supersample: samples per pixel along each axis (the antialiasing), in [1, 16].
    num_test: scenes in the held-out 'test' split.
  """

  MIN_IMAGE_SIZE: ClassVar[int] = 16

  image_size: int = 32
  min_objects: int = 1
  max_objects: int = 2
  shapes: tuple[str, ...] = SHAPE_KINDS
  colours: tuple[tuple[str, tuple[int, int, int]], ...] = DEFAULT_COLOURS
  sizes: tuple[tuple[str, float], ...] = DEFAULT_SIZES
  templates: tuple[str, ...] = DEFAULT_TEMPLATES
  caption_detail: float = 1.0
  holdout_pairs: tuple[tuple[str, str], ...] = ()
  jitter: float = 1.0
  background_max: float = 0.2
  background_noise: float = 0.0
  supersample: int = 4
  num_test: int = 5000

  def __post_init__(self):
    put = lambda field, value: object.__setattr__(self, field, value)  # Frozen: store normalised values.
    put("image_size", check_number(FIELD + "image_size", self.image_size, self.MIN_IMAGE_SIZE, 512, integer=True))
    put("min_objects", check_number(FIELD + "min_objects", self.min_objects, 1, GRID * GRID, integer=True))
    put(
      "max_objects", check_number(FIELD + "max_objects", self.max_objects, self.min_objects, GRID * GRID, integer=True)
    )
    shapes = _tuple("shapes", self.shapes, "shape names")
    for name in shapes:
      if name not in SHAPE_KINDS:
        raise ConfigError(f"{FIELD}shapes: {name!r} is not a shape; choose from {', '.join(map(repr, SHAPE_KINDS))}")
    _distinct("shapes", shapes)
    put("shapes", shapes)
    put("colours", tuple(self._colour(entry) for entry in _tuple("colours", self.colours, "(name, (r, g, b)) pairs")))
    _distinct("colours", self.colour_names)
    put("sizes", tuple(self._size(entry) for entry in _tuple("sizes", self.sizes, "(name, radius) pairs")))
    _distinct("sizes", self.size_names)
    put("templates", tuple(self._template(t) for t in _tuple("templates", self.templates, "template strings")))
    _distinct("templates", self.templates)
    self._check_words_apart()
    put("caption_detail", float(check_number(FIELD + "caption_detail", self.caption_detail, 0.0, 1.0)))
    put("holdout_pairs", self._holdout(_tuple("holdout_pairs", self.holdout_pairs, "(colour, shape) pairs")))
    put("jitter", float(check_number(FIELD + "jitter", self.jitter, 0.0, 1.0)))
    put("background_max", float(check_number(FIELD + "background_max", self.background_max, 0.0, 1.0)))
    put("background_noise", float(check_number(FIELD + "background_noise", self.background_noise, 0.0, 0.5)))
    put("supersample", check_number(FIELD + "supersample", self.supersample, 1, 16, integer=True))
    put("num_test", check_number(FIELD + "num_test", self.num_test, 1, integer=True))

  # ------------------------------------------------------------------ checks

  @staticmethod
  def _colour(entry) -> tuple[str, tuple[int, int, int]]:
    entry = _tuple("colours", entry, "(name, (r, g, b)) pairs")
    if len(entry) != 2:
      raise ConfigError(f"{FIELD}colours: {entry!r} must be a (name, (r, g, b)) pair")
    name = _word("colours", entry[0])
    rgb = _tuple("colours", entry[1], "channel values")
    if len(rgb) != 3:
      raise ConfigError(f"{FIELD}colours: {name!r} needs 3 channel values (r, g, b), got {rgb!r}")
    return name, tuple(check_number(f"{FIELD}colours[{name!r}]", c, 0, 255, integer=True) for c in rgb)

  @staticmethod
  def _size(entry) -> tuple[str, float]:
    entry = _tuple("sizes", entry, "(name, radius) pairs")
    if len(entry) != 2:
      raise ConfigError(f"{FIELD}sizes: {entry!r} must be a (name, radius) pair")
    name = _word("sizes", entry[0])
    radius = check_number(f"{FIELD}sizes[{name!r}]", entry[1], 0.0, 1 / (2 * GRID), low_inclusive=False)
    return name, float(radius)

  @staticmethod
  def _template(template) -> str:
    if not isinstance(template, str) or template.count(SLOT) != 1:
      raise ConfigError(f"{FIELD}templates: {template!r} must be a string with {SLOT} exactly once")
    for word in " ".join(template.split(SLOT)).split():
      if not _WORD.fullmatch(word):
        raise ConfigError(f"{FIELD}templates: {template!r} has {word!r}; use lower-case words of letters a-z")
    return " ".join(template.split())

  def _check_words_apart(self) -> None:
    """The parser reads an object word by word, so each word must have one role."""
    structural = set(ARTICLES) | {JOIN, GENERIC_SHAPE} | {w for _, phrase in POSITIONS for w in phrase.split()}
    roles = [("sizes", self.size_names), ("colours", self.colour_names), ("shapes", self.shapes)]
    for k, (field, names) in enumerate(roles):
      for name in names:
        clash = [other for other, others in roles[k + 1 :] if name in others]
        if name in structural or clash:
          where = clash[0] if clash else "the caption grammar (articles, 'and', 'shape', positions)"
          raise ConfigError(f"{FIELD}{field}: {name!r} is also a word of {where}; each word must have one role")

  def _holdout(self, pairs) -> tuple[tuple[str, str], ...]:
    pairs = tuple(tuple(_tuple("holdout_pairs", p, "(colour, shape) pairs")) for p in pairs)
    for pair in pairs:
      if len(pair) != 2 or pair[0] not in self.colour_names or pair[1] not in self.shapes:
        raise ConfigError(
          f"{FIELD}holdout_pairs: {pair!r} must be a (colour, shape) pair of this world's colours "
          f"{self.colour_names} and shapes {self.shapes}"
        )
    _distinct("holdout_pairs", pairs)
    held = set(pairs)
    for colour in self.colour_names:
      if all((colour, shape) in held for shape in self.shapes):
        raise ConfigError(f"{FIELD}holdout_pairs hold out every shape of colour {colour!r}; leave it one in training")
    for shape in self.shapes:
      if all((colour, shape) in held for colour in self.colour_names):
        raise ConfigError(f"{FIELD}holdout_pairs hold out every colour of shape {shape!r}; leave it one in training")
    return pairs

  # ------------------------------------------------------------------ derived tables

  @property
  def colour_names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.colours)

  @property
  def colour_values(self) -> np.ndarray:
    """float32 [C, 3] in [0, 1]."""
    return np.asarray([rgb for _, rgb in self.colours], np.float32) / 255.0

  @property
  def size_names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in self.sizes)

  @property
  def radii(self) -> np.ndarray:
    """float32 [num sizes]: radius as a fraction of the image side."""
    return np.asarray([radius for _, radius in self.sizes], np.float32)

  @property
  def position_names(self) -> tuple[str, ...]:
    return tuple(name for name, _ in POSITIONS)

  def pairs(self, split: str) -> np.ndarray:
    """int32 [P, 2]: the (colour id, shape id) pairs ``split`` draws from, uniformly.

    'train' leaves out :attr:`holdout_pairs`; 'test' draws every pair.
    """
    held = set(self.holdout_pairs) if split == "train" else set()
    return np.asarray(
      [
        (c, s)
        for c, colour in enumerate(self.colour_names)
        for s, shape in enumerate(self.shapes)
        if (colour, shape) not in held
      ],
      np.int32,
    )

  @property
  def vocabulary(self) -> tuple[str, ...]:
    """Every word a caption or a zero-shot prompt of this world can use, sorted."""
    words = set(ARTICLES) | {JOIN, GENERIC_SHAPE}
    words |= {w for _, phrase in POSITIONS for w in phrase.split()}
    words |= set(self.size_names) | set(self.colour_names) | set(self.shapes)
    words |= {w for t in self.templates for w in t.replace(SLOT, " ").split()}
    return tuple(sorted(words))

  def tokenizer(self) -> WordTokenizer:
    """The world's :class:`WordTokenizer`: the ids the device's captions use."""
    return WordTokenizer(self.vocabulary)

  @property
  def max_caption_words(self) -> int:
    """The longest caption, in words: the longest template around K full objects."""
    longest_position = max(len(phrase.split()) for _, phrase in POSITIONS)
    per_object = 5 + longest_position  # "and", article, size, colour, shape; the first has no "and".
    template = max(len(t.replace(SLOT, " ").split()) for t in self.templates)
    return template + per_object * self.max_objects - 1
