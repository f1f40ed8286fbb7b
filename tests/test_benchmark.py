"""Smoke tests of experiments/benchmark.py: it runs, prints its lines, and copes without open_clip.

They need neither torch nor open_clip: the peer's import is blocked, and the model is shrunk so
that compiling our step stays quick on 2 cores (4 emulated devices, see conftest.py).
"""

import sys

import jax
import numpy as np
import pytest
from absl import flags

from experiments import benchmark

FULL_CONFIG = benchmark.model_config  # kept before tests patch it


def small_config(name):
  """benchmark.model_config, shrunk to a two-stage ResNet at 8 px and a one-layer text tower."""
  config = FULL_CONFIG(name)
  m = config.model
  m.image_size, m.embed_dim, m.context_length, m.vocab_size = 8, 16, 8, 64
  m.resnet.layers, m.resnet.width, m.resnet.heads = (1,), 8, 2
  m.text.width, m.text.depth, m.text.heads = 16, 1, 2
  return config


@pytest.fixture
def no_peer(monkeypatch):
  """Makes `import torch` and `import open_clip` fail, as when the [bench] extra is absent."""
  monkeypatch.setitem(sys.modules, "torch", None)
  monkeypatch.setitem(sys.modules, "open_clip", None)


def test_smoke_import_peer_says_once_that_open_clip_is_missing(no_peer, capsys):
  assert benchmark.import_peer() is None
  assert capsys.readouterr().out.splitlines() == [benchmark.PEER_MISSING]


@pytest.fixture
def fast_init():
  """RBG keys while the test runs: XLA:CPU takes ~0.1 s to compile each threefry draw, so the
  model's init alone took 20 s of this test; the draws' values do not matter to it."""
  before = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  yield
  jax.config.update("jax_default_prng_impl", before)


def test_smoke_cli_without_open_clip_reports_ours(no_peer, fast_init, monkeypatch, capsys):
  monkeypatch.setattr(benchmark, "model_config", small_config)
  flags.FLAGS(["benchmark", "--steps=1", "--batch_size=8", "--recall_n=0", "--peer=on", "--model=tiny"])
  try:
    benchmark.main([])
  finally:
    flags.FLAGS.unparse_flags()
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("benchmark ") and "backend cpu" in lines[0]
  assert lines.count(benchmark.PEER_MISSING) == 1
  for label in ("float32 train step: ours ", "float32 image tower fwd+bwd: ours ", "float32 text tower fwd+bwd: ours "):
    [line] = [line for line in lines if line.startswith(label)]
    assert "ms/step" in line and "examples/s" in line and "open_clip" not in line
  assert any(line.startswith("parameters: ours ") for line in lines)
  assert any(line.startswith("float32 ours XLA: ") and "unknown peak" in line for line in lines)
  assert lines[-1] == "scenes batch generation: not timed (the world renders 16 px and up)"  # 8 px here


def test_smoke_batch_rows_end_in_eot():
  config = small_config("tiny")
  batch = benchmark.make_batch(config.model, 8)
  eot = config.model.vocab_size - 1
  assert batch["image"].shape == (8, 8, 8, 3) and batch["text"].shape == (8, 8)
  ends = np.argmax(batch["text"], axis=-1)
  assert (batch["text"][np.arange(8), ends] == eot).all()
  assert ((np.arange(8) > ends[:, None]) <= (batch["text"] == 0)).all()  # padding after EOT


def test_smoke_interleave_alternates_and_takes_medians():
  calls = []
  medians = benchmark.interleave(
    {"a": lambda n: calls.append(("a", n)), "b": lambda n: calls.append(("b", n))}, steps=12
  )
  assert set(medians) == {"a", "b"}
  # Warm-up, then rounds of 5 steps (3 rounds cover 12), the first runner alternating.
  assert [name for name, _ in calls] == ["a", "b", "a", "b", "b", "a", "a", "b"]
  assert [n for _, n in calls[2:]] == [5] * 6


def test_smoke_peak_flops_lookup():
  assert benchmark.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert benchmark.peak_flops("NVIDIA A100-SXM4-40GB", "float32") == 156e12
  assert benchmark.peak_flops("cpu", "float32") is None


def test_smoke_peer_has_our_parameter_count_and_steps():
  """Runs only where the [bench] extra is installed; skipped otherwise."""
  peer = benchmark.import_peer()
  if peer is None:
    pytest.skip(benchmark.PEER_MISSING)
  config = FULL_CONFIG("tiny")
  model = benchmark.models.create_model(config.model, 0.0)
  size, length = config.model.image_size, config.model.context_length
  shapes = jax.eval_shape(
    model.init, jax.random.PRNGKey(0), np.zeros((2, size, size, 3), np.float32), np.zeros((2, length), np.int32)
  )
  ours = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes["params"]))
  contender = benchmark.build_peer(*peer, config, benchmark.make_batch(config.model, 8), "float32")
  assert contender.num_params == ours == 2_040_089
  for run in (contender.step, contender.image, contender.text):
    run(1)


def test_smoke_embed_mode_times_ours_on_random_weights_of_the_models_shapes(monkeypatch, capsys):
  """--mode=embed with the tiny ViT of tests/fixtures/pretrained/ in place of ViT-B/32 (too
  large for a test), ours alone; the NumPy-drawn variables have exactly the model's shapes."""
  import os

  from flax import traverse_util

  from modgap_jax import pretrained

  fixture = os.path.join(os.path.dirname(__file__), "fixtures", "pretrained", "vit_gelu")
  monkeypatch.setattr(benchmark, "EMBED_CONFIG", fixture)
  model_cfg, _ = pretrained.to_model_config(fixture)
  variables = benchmark.embed_variables(model_cfg)
  flat = {path: v.shape for path, v in traverse_util.flatten_dict(variables).items()}
  assert flat.pop(("params", "temperature", "nu")) == ()
  assert flat == pretrained.layout.variable_shapes(model_cfg)
  medians = benchmark.run_embed(batch_size=4, steps=1, peer=False)
  [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("float32 embed: ours ")]
  assert "ms/batch" in line and "images/s" in line and "open_clip" not in line and set(medians) == {"ours"}


def test_smoke_scenes_generator_draws_each_devices_share_of_the_default_world():
  config = small_config("tiny")
  config.model.image_size = 16
  benchmark.scenes_generator(config, batch_size=8)(2)  # pmapped over the 4 emulated devices
