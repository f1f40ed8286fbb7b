"""Test set-up: four emulated CPU devices, so every pmap path runs as it would on 4 GPUs.

XLA reads the flag once, when jax first initialises its backend, so it is set here, before
any test module imports jax.
"""

import atexit
import os
import shutil
import socket
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep test runs off the network and out of the user's cache.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")

# A persistent compilation cache for this test run only. Most of the suite's time is XLA
# compiling the same tiny digits programs again: every train_and_evaluate call builds new jitted
# functions, and the entry-point tests start new processes. A fresh directory per run (or the
# one `python -m tests` shares between its modules) means nothing stale is ever read, and every
# test still compiles each program once. A positive size limit turns on jax's file lock, which
# keeps processes that share the directory from reading a half-written entry, but makes each
# write scan the directory: programs that compile in under 0.5 s are not worth an entry (with 0 s
# the suite wrote thousands and its small modules ran slower). The environment reaches the
# processes the tests start.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="modgap-jax-test-cache-")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

# One digits_captions build per test run, shared by every module (`python -m tests` runs each in
# its own process and hands them one directory through this variable, as for the cache above).
if "MODGAP_TEST_DATA_DIR" not in os.environ:
  _data_dir = tempfile.mkdtemp(prefix="modgap-jax-test-data-")
  atexit.register(shutil.rmtree, _data_dir, ignore_errors=True)
  os.environ["MODGAP_TEST_DATA_DIR"] = _data_dir


@pytest.fixture(scope="session")
def digits_dir():
  """A data_dir with digits_captions built, offline; built once per test run and read by all.

  A file lock keeps two processes of one run from building it at once; the build itself is
  TFDS's, which renames a finished build into place.
  """
  import filelock

  from modgap_jax import data

  directory = os.environ["MODGAP_TEST_DATA_DIR"]
  with filelock.FileLock(os.path.join(directory, ".build.lock")), pytest.MonkeyPatch.context() as patch:

    def refuse(*args, **kwargs):
      raise OSError("network access is disabled in tests")

    for name in ("connect", "connect_ex"):
      patch.setattr(socket.socket, name, refuse)
    patch.setattr(socket, "create_connection", refuse)
    patch.setattr(socket, "getaddrinfo", refuse)
    data.prepare("digits_captions", directory)
  return directory


# The colours of colour_folder's classes, and the captions each image gets.
FOLDER_COLOURS = {"red": (200, 30, 30), "green": (30, 190, 40), "blue": (40, 40, 210), "yellow": (220, 210, 30)}


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
  """An ``image_text_folder`` source: 96 small PNGs of 4 colour classes, shade varying per image,
  two captions each and a ``label`` (the colour), split train/test by the builder's hash."""
  import json

  import numpy as np
  from PIL import Image

  root = tmp_path_factory.mktemp("colour_folder")
  lines = []
  for i in range(96):
    name = list(FOLDER_COLOURS)[i % 4]
    shade = np.asarray(FOLDER_COLOURS[name]) * (0.6 + 0.4 * i / 96)
    Image.fromarray(np.full((10, 12, 3), shade, np.uint8)).save(root / f"{i:03d}.png")
    for caption in (f"a {name} square", f"square number {i}, {name}"):
      lines.append(json.dumps({"image": f"{i:03d}.png", "caption": caption, "label": name}))
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
  return str(root)
