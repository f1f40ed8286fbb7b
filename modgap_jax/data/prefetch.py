"""Background prefetching: overlap host batch preparation with device compute."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

_DONE = object()


class _Failure:

  def __init__(self, error: BaseException):
    self.error = error


def prefetch(iterable: Iterable[Any], buffer_size: int = 2) -> Iterator[Any]:
  """Yields the items of ``iterable``, produced up to ``buffer_size`` ahead by a thread.

  Order is preserved and an exception raised by the producer is re-raised here. Closing
  the returned generator (or dropping it) stops the thread after its current item.
  """
  if buffer_size < 1:
    raise ValueError(f"buffer_size={buffer_size} must be >= 1")
  items: queue.Queue = queue.Queue(maxsize=buffer_size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterable:
        if not put(item):
          return
      put(_DONE)
    except BaseException as e:  # pylint: disable=broad-except
      put(_Failure(e))

  # A daemon thread: an infinite training iterator must not keep the process alive.
  thread = threading.Thread(target=produce, name="modgap_jax-prefetch", daemon=True)
  thread.start()

  def consume():
    try:
      while True:
        item = items.get()
        if item is _DONE:
          return
        if isinstance(item, _Failure):
          raise item.error
        yield item
    finally:
      stop.set()

  return consume()


def prefetch_to_devices(iterable: Iterable[Any], buffer_size: int = 2,
                        devices: Sequence[Any] | None = None) -> Iterator[Any]:
  """Host-prefetches batches, then places each one sharded over ``devices`` ahead of use.

  Every leaf must have a leading axis of length ``len(devices)`` (the pipeline's layout);
  shard d goes to device d, in ``jax.pmap``'s device order by default.
  """
  from flax import jax_utils  # pylint: disable=g-import-not-at-top  (jax only where used)
  return jax_utils.prefetch_to_device(prefetch(iterable, buffer_size), buffer_size, devices)
