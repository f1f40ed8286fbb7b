"""Captions for labelled image datasets that ship no text (digits, MNIST, Fashion-MNIST).

Each image gets ``CAPTIONS_PER_IMAGE`` distinct templates out of its dataset's pool,
filled with its class. The choice is a fixed function of (salt, number of images, image
index), so a rebuild gives the same captions; varying the templates across images keeps
the text side from being one string per class.
"""

from __future__ import annotations

import hashlib

import numpy as np

CAPTIONS_PER_IMAGE = 3

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# {word}: "seven"; {numeral}: "7".
DIGIT_TEMPLATES = (
  "a photo of the digit {word}",
  "the number {numeral}",
  "a handwritten {word}",
  "an image of the number {word}",
  "the digit {numeral}",
  "a handwritten digit {numeral}",
)

# Fashion-MNIST's official class names (label order) and the words used in captions.
FASHION_LABELS = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)
FASHION_WORDS = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")

FASHION_TEMPLATES = (
  "a photo of the {word}",
  "a black and white photo of the {word}",
  "a low resolution photo of the {word}",
  "a picture of the {word}",
  "the {word}",
  "a grayscale image of the {word}",
)


def template_choice(num_images: int, num_templates: int, salt: str) -> np.ndarray:
  """Returns int [num_images, CAPTIONS_PER_IMAGE]: distinct template ids per image."""
  seed = int.from_bytes(hashlib.sha256(salt.encode("utf-8")).digest()[:8], "little")
  rng = np.random.default_rng(seed)
  return np.argsort(rng.random((num_images, num_templates)), axis=1)[:, :CAPTIONS_PER_IMAGE]


def digit_captions(labels: np.ndarray, salt: str) -> list[list[str]]:
  """Captions for digit images with integer labels 0..9."""
  choice = template_choice(len(labels), len(DIGIT_TEMPLATES), salt)
  return [
    [DIGIT_TEMPLATES[t].format(word=DIGIT_WORDS[y], numeral=str(y)) for t in row]
    for y, row in zip(labels.tolist(), choice.tolist())
  ]


def fashion_captions(labels: np.ndarray, salt: str) -> list[list[str]]:
  """Captions for Fashion-MNIST images with integer labels 0..9."""
  choice = template_choice(len(labels), len(FASHION_TEMPLATES), salt)
  return [
    [FASHION_TEMPLATES[t].format(word=FASHION_WORDS[y]) for t in row]
    for y, row in zip(labels.tolist(), choice.tolist())
  ]
