"""Deterministic train/test assignment for datasets that ship without splits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def hash_fraction(key: str, salt: str) -> float:
  """A uniform-looking number in [0, 1) fixed by (salt, key): SHA-256, first 8 bytes."""
  digest = hashlib.sha256(f"{salt}:{key}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(keys: Iterable[str], train_fraction: float, salt: str) -> frozenset[str]:
  """Returns the keys that go to the train split: those with ``hash_fraction < train_fraction``.

  Each key's side depends on that key alone, so it does not move when a package update
  adds or removes other keys, nor with listing order or NumPy's RNG. The train share is
  ``train_fraction`` up to sampling noise (about ±1% for 2000 keys).
  """
  return frozenset(k for k in set(keys) if hash_fraction(k, salt) < train_fraction)
