"""Reads IDX files, the (optionally gzipped) array format of MNIST and Fashion-MNIST.

Layout: two zero bytes, a type code, the number of dimensions n, then n big-endian uint32
sizes, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from modgap_jax.errors import ConfigError

_DTYPES = {
  0x08: np.dtype(np.uint8),
  0x09: np.dtype(np.int8),
  0x0B: np.dtype(">i2"),
  0x0C: np.dtype(">i4"),
  0x0D: np.dtype(">f4"),
  0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
  """Decodes the bytes of one IDX file into an array in native byte order."""
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
    raise ConfigError(f"file={name!r} is not an IDX file (bad magic number)")
  dtype, ndim = _DTYPES[data[2]], data[3]
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
  expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  if len(data) != expected:
    raise ConfigError(f"file={name!r} is truncated or padded: {len(data)} bytes, its header says {expected}")
  values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
  return values.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file; a name ending in ``.gz`` is gunzipped first."""
  path = os.fspath(path)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    return parse_idx(f.read(), path)
