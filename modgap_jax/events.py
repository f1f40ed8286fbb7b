"""TensorBoard event files beside ``metrics.jsonl``, written with tensorboardX (no TensorFlow).

Every scalar of a ``metrics.jsonl`` line goes to the tag ``<split>/<key>`` at its step, and the
final PCA figure goes in as an image. A resumed run opens its writer with ``purge_step`` at the
restored step, so TensorBoard drops what the killed run had logged past its last checkpoint,
as ``metrics.jsonl`` does.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np


class EventLog:
  """A tensorboardX ``SummaryWriter`` on ``logdir``; ``enabled=False`` makes every call a no-op."""

  def __init__(self, logdir: str, *, resume_step: int, enabled: bool = True):
    self._writer = None
    if enabled:
      from tensorboardX import SummaryWriter  # imported only when event files are wanted

      self._writer = SummaryWriter(logdir=logdir, purge_step=resume_step or None, flush_secs=30)

  def scalars(self, step: int, split: str, values: Mapping[str, Any]) -> None:
    """``<split>/<key>`` for every finite real number among ``values``."""
    if self._writer is None:
      return
    for key, value in values.items():
      if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        self._writer.add_scalar(f"{split}/{key}", float(value), int(step))

  def image(self, tag: str, step: int, png_path: str) -> None:
    """A PNG file as an image summary."""
    if self._writer is None:
      return
    from PIL import Image

    with Image.open(png_path) as image:
      pixels = np.asarray(image.convert("RGB"))
    self._writer.add_image(tag, pixels, int(step), dataformats="HWC")

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
