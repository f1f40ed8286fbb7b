"""TensorBoard event files beside ``metrics.jsonl``, with tensorboardX's protobufs (no TensorFlow).

Every scalar of a ``metrics.jsonl`` line goes to the tag ``<split>/<key>`` at its step, and the
final PCA figure goes in as an image. A resumed run starts its file with a ``SessionLog.START``
at the restored step, so TensorBoard drops what the killed run had logged past its last
checkpoint, as ``metrics.jsonl`` does.

Events are written here, in the caller's thread, each as one TFRecord (u64 length, its masked
CRC-32C, the event, the event's masked CRC-32C) appended unbuffered. tensorboardX's
``SummaryWriter`` writes from a thread of its own: when the disk filled, that thread died
with a traceback, the next ten events filled its queue, and the eleventh blocked the run for
good. Here a failed write raises :class:`~modgap_jax.errors.StorageError` at its step.
"""

from __future__ import annotations

import math
import numbers
import os
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from modgap_jax import run_io, storage


class EventLog:
  """An event file in ``logdir`` (``events.out.tfevents.<time>.<host>``, TensorBoard's naming);
  ``enabled=False`` makes every call a no-op."""

  def __init__(self, logdir: str, *, resume_step: int, enabled: bool = True):
    self._file = None
    if not enabled:
      return
    from tensorboardX.proto import event_pb2  # imported only when event files are wanted

    self._event = event_pb2.Event
    self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
    with storage.writing(self.path):
      os.makedirs(logdir, exist_ok=True)
      self._file = open(self.path, "ab", buffering=0)
    self._write(event_pb2.Event(file_version="brain.Event:2"), step=None)
    if resume_step:
      start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
      self._write(event_pb2.Event(step=int(resume_step), session_log=start), step=resume_step)

  def scalars(self, step: int, split: str, values: Mapping[str, Any]) -> None:
    """``<split>/<key>`` for every finite real number among ``values``, in one event."""
    if self._file is None:
      return
    from tensorboardX.proto.summary_pb2 import Summary
    from tensorboardX.summary import scalar

    kept = [
      scalar(f"{split}/{key}", float(value)).value[0]
      for key, value in values.items()
      if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ]
    if kept:
      self._write(self._event(step=int(step), summary=Summary(value=kept)), step=step)

  def image(self, tag: str, step: int, png_path: str) -> None:
    """A PNG file as an image summary."""
    if self._file is None:
      return
    from PIL import Image
    from tensorboardX.summary import image

    with Image.open(png_path) as picture:
      pixels = np.asarray(picture.convert("RGB"))
    self._write(self._event(step=int(step), summary=image(tag, pixels, dataformats="HWC")), step=step)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def _write(self, event, *, step: int | None) -> None:
    event.wall_time = time.time()
    data = event.SerializeToString()
    with storage.writing(self.path, step=step):
      run_io.append(self._file, tfrecord(data))


def tfrecord(data: bytes) -> bytes:
  """``data`` framed as one TFRecord: u64 length, masked CRC-32C of it, data, masked CRC-32C."""
  from tensorboardX.record_writer import masked_crc32c

  header = struct.pack("<Q", len(data))
  return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))
