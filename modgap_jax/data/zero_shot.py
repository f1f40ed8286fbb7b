"""Class names and prompt templates for zero-shot classification (MATH.md §2).

``classnames[k]`` names label id ``k`` of the dataset's ``label_key`` feature. Templates
are ``str.format`` strings with one ``{}``; the metric embeds ``template.format(name)``
for every template, averages over templates and re-normalises.
"""

from __future__ import annotations

from modgap_jax.data import registry
from modgap_jax.data.builders import class_captions, image_text_folder, twemoji
from modgap_jax.errors import ConfigError, check_choice

EMOJI_TEMPLATES = ("an emoji of {}.", "a {} emoji.", "an icon of {}.", "a picture of {}.")
DIGIT_TEMPLATES = ("a photo of the digit {}.", "the number {}.", "a handwritten {}.", "an image of the number {}.")
FASHION_TEMPLATES = (
  "a photo of the {}.",
  "a black and white photo of the {}.",
  "a low resolution photo of the {}.",
  "a picture of the {}.",
)
# image_text_folder: the label strings are the class names; nothing is known of the images.
FOLDER_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "{}.")


def _emoji_group(name: str) -> str:
  # 'Smileys & Emotion' -> 'smileys & emotion'; 'person-fantasy' -> 'person fantasy'.
  return name.lower().replace("-", " ")


def zero_shot_classes(dataset: str, label_key: str | None = None, *, split=None) -> tuple[list[str], list[str]]:
  """Returns ``(classnames, templates)`` for a labelled dataset.

  Args:
    dataset: a dataset with labels: twemoji_captions, digits_captions, mnist5k_captions,
      fashion_mnist_local, or image_text_folder (when its lines have labels).
    label_key: one of ``registry.label_keys(dataset)``; default the first (for twemoji,
      'subcategory'; 'category' is the other).
    split: an ``Examples`` of the dataset; image_text_folder needs it, since its class
      names are the label strings of that build (``split.class_names``).
  """
  check_choice("dataset", dataset, registry.DATASETS)
  keys = registry.label_keys(dataset)
  if not keys:
    raise ConfigError(
      f"dataset={dataset!r} has no labels for zero-shot; choose one of "
      f"{', '.join(repr(d) for d in registry.DATASETS if registry.LABEL_KEYS[d])}"
    )
  label_key = check_choice(f"label_key (of {dataset})", label_key or keys[0], keys)
  if dataset == image_text_folder.NAME:
    names = dict(getattr(split, "class_names", None) or {}).get(label_key)
    if not names:
      raise ConfigError(
        f"dataset={dataset!r} has class names only with its split: pass split= (an Examples "
        "whose captions.jsonl has 'label' fields); set dataset.zero_shot_label='' to turn zero-shot off"
      )
    return list(names), list(FOLDER_TEMPLATES)
  if dataset == "twemoji_captions":
    names = twemoji.subcategory_names() if label_key == "subcategory" else twemoji.category_names()
    return [_emoji_group(n) for n in names], list(EMOJI_TEMPLATES)
  if dataset == "fashion_mnist_local":
    return list(class_captions.FASHION_WORDS), list(FASHION_TEMPLATES)
  return list(class_captions.DIGIT_WORDS), list(DIGIT_TEMPLATES)
