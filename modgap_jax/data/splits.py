"""Deterministic train/test assignment for datasets that ship without splits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _digest(salt: str, key: str) -> str:
  return hashlib.sha256(f"{salt}:{key}".encode("utf-8")).hexdigest()


def hash_split(keys: Iterable[str], train_fraction: float, salt: str) -> frozenset[str]:
  """Returns the keys that go to the train split.

  Keys are ordered by SHA-256 of ``salt:key`` and the first ``round(train_fraction * n)``
  unique keys are train. Hashing (rather than a seeded permutation) makes the split
  independent of NumPy's RNG and of the order in which keys are listed, and a key's side
  only changes if the key set itself changes.
  """
  unique = sorted(set(keys))
  ranked = sorted(unique, key=lambda k: _digest(salt, k))
  return frozenset(ranked[:round(train_fraction * len(ranked))])
