"""Test set-up: four emulated CPU devices, so every pmap path runs as it would on 4 GPUs.

XLA reads the flag once, when jax first initialises its backend, so it is set here, before
any test module imports jax.
"""

import atexit
import os
import shutil
import tempfile

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
