"""Reading a checkpoint file into a flat state dict of NumPy arrays, whatever its format.

- ``.safetensors`` (open_clip's ``open_clip_model.safetensors``, and OpenAI's weights in the
  Hugging Face hub's ``timm/*_clip.openai`` repositories): read with NumPy, no torch.
- PyTorch pickles (``torch.save`` zip archives or the older plain pickles, e.g. open_clip's
  ``open_clip_pytorch_model.bin`` or a training checkpoint's ``{"state_dict": …}``): read by
  ``torch.load(weights_only=True)`` when torch is installed; otherwise a ConfigError says how
  to convert the file once where torch is.
- TorchScript archives (OpenAI's original ``.pt``): refused, since loading one runs the code
  stored inside it; the same weights exist as safetensors.

Formats are told apart by content, not by extension: a ``.pt`` may be either of the last two.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from modgap_jax.errors import ConfigError
from modgap_jax.pretrained import safetensors_io

# In a directory, the weights open_clip publishes, in the order open_clip itself prefers them.
# Not 'model.safetensors' or 'pytorch_model.bin': in the hub's repositories those hold timm's or
# transformers' layouts of the same weights.
WEIGHT_FILES = (
  'open_clip_model.safetensors',
  'open_clip_pytorch_model.safetensors',
  'open_clip_pytorch_model.bin',
  'open_clip_pytorch_model.pth',
)
_PICKLE_PROTOCOL = 0x80  # The first byte of a binary pickle, as old torch.save files are.


def find_weights(directory: str) -> str:
  """The weight file in ``directory`` (see ``WEIGHT_FILES``); ConfigError if there is none."""
  for name in WEIGHT_FILES:
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  raise ConfigError(f'checkpoint directory {directory} holds none of {", ".join(WEIGHT_FILES)}')


def is_torchscript(path: str) -> bool:
  """True for a TorchScript archive: a zip with the serialized code (``code/``) and ``constants.pkl``."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
  return any(n.endswith('/constants.pkl') or '/code/' in n for n in names)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A checkpoint file's tensors by open_clip name (``module.`` prefixes of DDP stripped)."""
  if not os.path.isfile(path):
    raise ConfigError(f'checkpoint {path} does not exist')
  if safetensors_io.is_safetensors(path):
    state = safetensors_io.read(path)
  elif is_torchscript(path):
    raise ConfigError(
      f'checkpoint {path} is a TorchScript archive (as OpenAI\'s original .pt files are), which is refused '
      'because loading one runs the code inside it; use the same weights as open_clip_model.safetensors '
      "(the Hugging Face hub's timm/<model>_clip.openai repositories) with the '<model>-quickgelu' config"
    )
  elif zipfile.is_zipfile(path) or _starts_with_pickle(path):
    state = _torch_load(path)
  else:
    raise ConfigError(f'checkpoint {path} is neither safetensors nor a PyTorch file')
  if state and all(key.startswith('module.') for key in state):
    state = {key[len('module.') :]: value for key, value in state.items()}
  return state


def _starts_with_pickle(path: str) -> bool:
  with open(path, 'rb') as f:
    return f.read(1) == bytes([_PICKLE_PROTOCOL])


def import_torch():
  """``import torch``; a function so that tests can act out a machine without it."""
  import torch

  return torch


def _torch_load(path: str) -> dict[str, np.ndarray]:
  """A torch pickle's state dict as NumPy, through torch's weights-only unpickler."""
  try:
    torch = import_torch()
  except ImportError:
    raise ConfigError(
      f'checkpoint {path} is a PyTorch pickle, and reading one needs torch, which is not installed; install it '
      "(pip install 'modgap_jax[bench]') or convert the file once where torch is: python -c \"import torch, "
      f"safetensors.torch as s; s.save_file(torch.load('{path}', weights_only=True), 'open_clip_model.safetensors')\""
    ) from None
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as error:  # torch raises many types for a bad or unsafe pickle.
    raise ConfigError(
      f'checkpoint {path} could not be read by torch.load(weights_only=True): {error}'.splitlines()[0]
    ) from None
  if isinstance(loaded, dict) and isinstance(loaded.get('state_dict'), dict):
    loaded = loaded['state_dict']  # An open_clip training checkpoint.
  if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
    raise ConfigError(f'checkpoint {path} is a PyTorch file but not a state dict of tensors')
  out = {}
  for key, tensor in loaded.items():
    tensor = tensor.detach().cpu()
    # NumPy has no bfloat16 in torch's conversion; float32 holds every bf16 value exactly.
    out[key] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
  return out
