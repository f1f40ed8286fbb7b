"""Test set-up: four emulated CPU devices, so every pmap path runs as it would on 4 GPUs.

XLA reads the flag once, when jax first initialises its backend, so it is set here, before
any test module imports jax.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep test runs off the network and out of the user's cache.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
