"""The scenes world as a run's data mode: through the run setup, the trainer and the entry point."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import scenes as scenes_regime
from modgap_jax import data_modes, run_setup, train
from modgap_jax.data import scenes
from modgap_jax.errors import ConfigError
from tests.test_train import check_killed_run_resumes_exactly, shrink

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_scenes_config(method="baseline", **overrides):
  """configs/scenes.py shrunk: 16 px scenes, a two-stage ResNet, a one-block text tower."""
  config = scenes_regime.get_config(method)
  config.dataset.scenes.num_test = 64
  config.dataset.scenes.num_probe = 64
  return shrink(config, image_size=16, batch_size=32, overrides=overrides)


def test_setup_run_picks_the_scenes_mode_and_renders_its_splits():
  config = tiny_scenes_config()
  run = run_setup.setup_run(config, None)
  assert isinstance(run.data_mode, data_modes.ScenesMode)
  assert (len(run.eval_split), len(run.train_split)) == (64, 64)
  assert run.config.dataset.eval_split == "test"
  world = scenes.world_from_config(config.dataset, 16)
  assert run.tokenizer == world.tokenizer()
  # The held-out split is the world's 'test' stream of dataset.scenes.seed, scene for scene.
  reference = scenes.make_examples(world, 0, "test", 64)
  np.testing.assert_array_equal(run.eval_split.fetch(np.arange(64), 16)[0], reference.fetch(np.arange(64), 16)[0])
  assert run.eval_split.captions() == reference.captions()
  # The unbounded stream has no epochs: epoch_size scenes count as one.
  assert run.plan.steps_per_epoch == 10_000 // 32


def test_a_pool_with_another_tokenizer_trains_as_a_resident_split():
  config = tiny_scenes_config(**{"dataset.tokenizer": "byte", "dataset.scenes.num_train": 96, "model.vocab_size": 259})
  run = run_setup.setup_run(config, None)
  assert isinstance(run.data_mode, data_modes.ResidentMode)
  assert len(run.train_split) == 96 and run.plan.steps_per_epoch == 3


@pytest.mark.parametrize(
  "overrides,match",
  [
    ({"dataset.tokenizer": "bpe", "model.vocab_size": 400}, "dataset.scenes.num_train > 0"),
    ({"dataset.crop_scale": (0.5, 1.0)}, "dataset.crop_scale"),
    ({"dataset.mismatch_fraction": 0.2}, "dataset.mismatch_fraction"),
    ({"dataset.augment_min_scale": 0.5}, "dataset.augment_min_scale"),
    ({"dataset.eval_split": "val"}, "dataset.eval_split"),
    ({"dataset.scenes.caption_detail": 1.5}, "dataset.scenes.caption_detail"),
    ({"dataset.scenes.num_probe": 0}, "dataset.scenes.num_probe"),
    ({"dataset.scenes.num_train": 8}, "dataset.scenes.num_train"),  # a pool smaller than a batch
  ],
)
def test_bad_scenes_configs_are_refused_by_field_before_any_write(tmp_path, overrides, match):
  config = tiny_scenes_config(**overrides)
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=match.replace(".", r"\.").replace(">", ">")):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def _read(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_resumed_scenes_run_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
  """The unbounded stream, two steps per dispatch (the pool's indices are tested in test_scenes)."""
  config = tiny_scenes_config(**{"eval_every": 100, "eval.linear_probe": False, "steps_per_dispatch": 2})
  log = check_killed_run_resumes_exactly(config, tmp_path, monkeypatch)
  assert log[0]["loss"] != log[1]["loss"]  # fresh scenes at every step


def test_scenes_run_through_the_entry_point_reports_zero_shot_on_shapes(tmp_path):
  workdir = tmp_path / "run"
  flags = [
    "--config=configs/scenes.py:detail=0.5,flt=0.04",
    "--config.num_steps=2",
    "--config.eval_every=2",
    "--config.model.image_size=16",
    "--config.model.resnet.layers=(1, 1)",
    "--config.model.resnet.width=8",
    "--config.model.text.depth=1",
    "--config.batch_size=32",
    "--config.dataset.scenes.num_test=64",
    "--config.dataset.scenes.num_probe=64",
    "--config.eval.probe_steps=10",
    "--config.progress_bar=False",
  ]
  out = subprocess.run(
    [sys.executable, "-m", "experiments.main", *flags, f"--workdir={workdir}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  config = json.load(open(workdir / "config.json"))
  assert config["dataset"]["scenes"]["caption_detail"] == 0.5 and config["method"] == "detail=0.5,flt=0.04"
  final = [r for r in _read(workdir) if r["split"] == "eval"][-1]
  assert 0.0 <= final["zeroshot_top1"] <= 1.0 and abs(final["tau"] - 0.04) < 1e-6
  assert "eval `test`" in (workdir / "report.md").read_text()


def test_fig4b_trains_on_the_scenes_the_stream_draws_at_its_first_steps():
  from modgap_jax.study import fig4b

  run = run_setup.setup_run(tiny_scenes_config(), None)
  stream = dataclasses.replace(run.stream, num_devices=1)
  batches = fig4b.first_batches(run, stream, 2)
  world = scenes.world_from_config(run.config.dataset, 16)
  size, length = stream.global_batch_size, stream.context_length
  # Step s of the unbounded stream is 'train' scenes sB .. sB + B - 1, rendered and captioned on the host.
  reference = scenes.make_examples(world, stream.seed, "train", 2 * size)
  tokenizer = world.tokenizer()
  for step, batch in enumerate(batches):
    images, captions = reference.fetch(np.arange(step * size, (step + 1) * size), 16)
    expected = (images / np.float32(255) - np.float32(stream.mean)) / np.float32(stream.std)
    np.testing.assert_allclose(batch["image"][0], expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(batch["text"][0], np.concatenate([tokenizer.encode(c[0], length) for c in captions]))
