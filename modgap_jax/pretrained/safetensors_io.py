"""Reading and writing ``.safetensors`` files with NumPy alone.

The format (the one open_clip and the Hugging Face hub publish weights in)::

    [8 bytes]  N, the header's length, unsigned little-endian
    [N bytes]  a JSON object: {name: {"dtype": "F32", "shape": [...], "data_offsets": [b, e]}, ...}
               plus an optional "__metadata__" object of strings
    [rest]     the data: tensor ``name`` is bytes [b, e) of it, little-endian, row-major

Why our own reader rather than the ``safetensors`` package: its NumPy API has no bfloat16
(some published CLIP weights are bf16), and a loader must name the first tensor a truncated
file cuts, which needs the header before the data anyway. Reading maps the file, so a large
checkpoint is not copied twice.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping

import ml_dtypes
import numpy as np

from modgap_jax.errors import ConfigError

# The format's dtype names and NumPy's (explicitly little-endian).
DTYPES = {
  'F64': np.dtype('<f8'),
  'F32': np.dtype('<f4'),
  'F16': np.dtype('<f2'),
  'BF16': np.dtype(ml_dtypes.bfloat16),
  'I64': np.dtype('<i8'),
  'I32': np.dtype('<i4'),
  'I16': np.dtype('<i2'),
  'I8': np.dtype('i1'),
  'U64': np.dtype('<u8'),
  'U32': np.dtype('<u4'),
  'U16': np.dtype('<u2'),
  'U8': np.dtype('u1'),
  'BOOL': np.dtype('?'),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_HEADER_LIMIT = 100 << 20  # The format's own bound on the header (100 MB): guards a garbage length.
_ALIGN = 8  # The header is padded with spaces so that the data starts 8-byte aligned.


def is_safetensors(path: str) -> bool:
  """True if ``path`` starts like a safetensors file: a plausible length, then '{'."""
  with open(path, 'rb') as f:
    head = f.read(9)
  return len(head) == 9 and struct.unpack('<Q', head[:8])[0] <= _HEADER_LIMIT and head[8:9] == b'{'


def read_header(path: str) -> tuple[dict[str, dict], int]:
  """Returns ``(entries, data_start)``: the header without ``__metadata__``, and where the data begins.

  Raises a one-line ConfigError if the header is cut short or is not the format's JSON.
  """
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) < 8:
      raise ConfigError(f'checkpoint {path} is truncated: {size} bytes, too short for a safetensors header')
    (length,) = struct.unpack('<Q', head)
    if length > _HEADER_LIMIT:
      raise ConfigError(f'checkpoint {path} is not a safetensors file: its header length {length} is implausible')
    if 8 + length > size:
      raise ConfigError(f'checkpoint {path} is truncated: its {length}-byte header runs past the end ({size} bytes)')
    raw = f.read(length)
  try:
    header = json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise ConfigError(f'checkpoint {path} has a malformed safetensors header: {error}') from None
  if not isinstance(header, dict):
    raise ConfigError(f'checkpoint {path} has a malformed safetensors header: not a JSON object')
  header.pop('__metadata__', None)
  for name, entry in header.items():
    _check_entry(path, name, entry)
  return header, 8 + length


def _check_entry(path: str, name: str, entry) -> None:
  """One header entry must have a known dtype, a shape, and offsets spanning exactly its bytes."""
  try:
    dtype = DTYPES[entry['dtype']]
    shape = [int(d) for d in entry['shape']]
    begin, end = (int(o) for o in entry['data_offsets'])
  except (KeyError, TypeError, ValueError):
    raise ConfigError(
      f'checkpoint {path}: tensor {name!r} has a malformed header entry {entry!r} '
      f'(dtype one of {", ".join(DTYPES)}, shape, data_offsets)'
    ) from None
  if min(shape, default=0) < 0 or end - begin != math.prod(shape) * dtype.itemsize or begin < 0:
    raise ConfigError(
      f'checkpoint {path}: tensor {name!r} has data_offsets {[begin, end]} that do not hold '
      f'shape {shape} of {entry["dtype"]}'
    )


def read(path: str) -> dict[str, np.ndarray]:
  """All tensors of a safetensors file, in the header's order, as NumPy arrays of their stored dtype.

  The arrays are read-only views of a memory map of the file. A file cut short raises a
  one-line ConfigError naming the first tensor (in file order) whose bytes are missing.
  """
  header, start = read_header(path)
  data_size = os.path.getsize(path) - start
  by_offset = sorted(header.items(), key=lambda item: int(item[1]['data_offsets'][0]))
  for name, entry in by_offset:
    end = int(entry['data_offsets'][1])
    if end > data_size:
      raise ConfigError(
        f'checkpoint {path} is truncated: tensor {name!r} needs data bytes up to {end} but the file holds {data_size}'
      )
  data = (
    np.memmap(path, dtype=np.uint8, mode='r', offset=start, shape=(data_size,)) if data_size else np.zeros(0, np.uint8)
  )
  tensors = {}
  for name, entry in header.items():
    begin, end = (int(o) for o in entry['data_offsets'])
    shape = tuple(int(d) for d in entry['shape'])
    # Plain ndarrays over the map, rather than np.memmap objects.
    tensors[name] = data[begin:end].view(np.ndarray).view(DTYPES[entry['dtype']]).reshape(shape)
  return tensors


def write(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
  """Writes ``tensors`` (in the mapping's order) as a safetensors file at ``path``.

  ``metadata`` (strings only, as the format requires) goes to ``__metadata__``; open_clip's
  loaders read the file through the ``safetensors`` package, which accepts any.
  """
  header: dict[str, dict] = {}
  arrays = []
  offset = 0
  for name, value in tensors.items():
    array = np.asarray(value)
    array = array if array.flags.c_contiguous else array.copy(order='C')  # (ascontiguousarray makes 0-d 1-d)
    dtype = array.dtype.newbyteorder('<') if array.dtype.byteorder == '>' else array.dtype
    if dtype not in _NAMES:
      raise ConfigError(f'tensor {name!r} has dtype {array.dtype}, which safetensors cannot store')
    array = array.astype(dtype, copy=False)
    header[name] = {'dtype': _NAMES[dtype], 'shape': list(array.shape), 'data_offsets': [offset, offset + array.nbytes]}
    arrays.append(array)
    offset += array.nbytes
  if metadata:
    header = {'__metadata__': {str(k): str(v) for k, v in metadata.items()}, **header}
  raw = json.dumps(header, separators=(',', ':')).encode('utf-8')
  raw += b' ' * (-(8 + len(raw)) % _ALIGN)
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(raw)))
    f.write(raw)
    for array in arrays:
      f.write(array.tobytes())
