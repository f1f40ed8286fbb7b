"""The study runner on a tiny digits grid: skipping, aggregation, table, figures, commands."""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from configs import study as study_config
from modgap_jax import study, train
from modgap_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("dataset.name=digits_captions", "dataset.zero_shot_label=label", "model.image_size=8", "model.embed_dim=16",
        "model.context_length=24", "model.resnet.layers=(1, 1)", "model.resnet.width=8", "model.resnet.heads=2",
        "model.text.width=16", "model.text.depth=1", "model.text.heads=2", "batch_size=64", "num_steps=4",
        "eval_every=2", "checkpoint_every=2", "eval.probe_steps=20", "optimizer.warmup_epochs=0.1",
        "dataset.augment_min_scale=1.0")


def tiny_study(data_dir, cells=("baseline", "flt=0.04"), seeds=2):
  config = study_config.get_config("table2")
  config.cells = cells
  config.seeds = seeds
  config.base_config = os.path.join(REPO, "configs", "regime.py")
  config.base_overrides = TINY + (f"dataset.data_dir={data_dir}",)
  config.progress_bar = False
  return config


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("study"))
  config = tiny_study(data_dir)
  results = study.run_study(config, workdir)
  return config, workdir, results, data_dir


def test_results_hold_mean_and_sample_std_of_each_runs_final_eval(grid):
  config, workdir, results, _ = grid
  assert results == json.load(open(os.path.join(workdir, "results.json")))
  assert [c["cell"] for c in results["cells"]] == ["baseline", "flt=0.04"]
  for cell in results["cells"]:
    assert cell["seeds"] == [0, 1] and cell["num_steps"] == 4
    finals = []
    for seed in (0, 1):
      lines = [json.loads(l) for l in open(os.path.join(workdir, cell["cell"], f"seed{seed}", "metrics.jsonl"))]
      finals.append([l for l in lines if l["split"] == "eval"][-1])
    for key in ("gap", "tau", "i2t_r1", "uniformity_w2"):
      values = np.array([f[key] for f in finals], np.float64)
      assert cell["metrics"][key]["values"] == pytest.approx(list(values))
      assert cell["metrics"][key]["mean"] == pytest.approx(values.mean())
      assert cell["metrics"][key]["std"] == pytest.approx(values.std(ddof=1))


def test_table_and_figures(grid):
  _, workdir, _, _ = grid
  table = open(os.path.join(workdir, "table.md")).read()
  assert "0.294" in table and "68.23" in table  # the paper's Table 2 baseline gap and image R@1
  for name in ("retrieval_vs_gap.png", "accuracy_vs_uniformity.png", "tau_gap_over_steps.png", "gap_vs_tau.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name


def test_second_invocation_trains_nothing(grid, monkeypatch):
  config, workdir, results, _ = grid
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: pytest.fail("a finished run was retrained"))
  assert study.run_study(config, workdir) == results


def test_recorded_command_reproduces_a_seed(grid, tmp_path):
  config, workdir, results, data_dir = grid
  cell = results["cells"][1]
  run = str(tmp_path / "again")
  cmd = shlex.split(cell["command"].format(seed=1, workdir=run))
  assert cmd[0] == "python"
  cmd[0] = sys.executable  # the interpreter of this environment
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  final = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if '"eval"' in l][-1]
  assert final["gap"] == pytest.approx(cell["metrics"]["gap"]["values"][1], rel=1e-6)
  assert final["tau"] == pytest.approx(cell["metrics"]["tau"]["values"][1], rel=1e-6)


def test_linear_fit_against_numpy():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(30)
  y = 0.3 - 2.0 * x + 0.1 * rng.standard_normal(30)
  slope, intercept, r2 = study.linear_fit(x, y)
  np.testing.assert_allclose([slope, intercept], np.polyfit(x, y, 1), rtol=1e-10)
  np.testing.assert_allclose(r2, np.corrcoef(x, y)[0, 1] ** 2, rtol=1e-10)
  assert study.linear_fit(x, 1.0 + 3.0 * x)[2] == pytest.approx(1.0)


def test_theorem32_fit_recovers_an_exact_law():
  steps = np.arange(100, 2000, 50)
  records = [[{"split": "eval", "step": int(t), "gap": 0.2 + 0.5 / np.log(t) ** 2} for t in steps]]
  fit = study.theorem32_fit(records, warmup_steps=100)
  assert fit["r2"] == pytest.approx(1.0) and fit["slope"] == pytest.approx(-0.5) and fit["intercept"] == pytest.approx(0.2)


def test_bad_study_and_override_are_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="study='table9'"):
    study_config.get_config("table9")
  config = tiny_study(str(tmp_path))
  config.base_overrides = ("model.nope=3",)
  with pytest.raises(ConfigError, match="model.nope"):
    study.run_study(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
