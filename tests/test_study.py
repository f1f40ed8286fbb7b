"""The study runner on tiny digits grids: skipping, aggregation, table, figures, commands, Fig. 4a/4b."""

import functools
import json
import os
import shlex
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import study as study_config
from modgap_jax import study, train, train_step
from modgap_jax.errors import ConfigError, Preempted
from modgap_jax.study import fig4b
from modgap_jax.study import results as study_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# tests/test_train.py's digits_config, as base overrides of the regime: 8×8 digits, tiny towers.
TINY = {
  "dataset": {"name": "digits_captions", "zero_shot_label": "label"},
  "model.image_size": 8,
  "model.embed_dim": 16,
  "model.context_length": 24,
  "model.resnet.layers": (1, 1),
  "model.resnet.width": 8,
  "model.resnet.heads": 2,
  "model.text": {"width": 16, "depth": 1, "heads": 2},
  "batch_size": 64,
  "num_steps": 4,
  "optimizer.warmup_epochs": 0.1,
  "log_every": 1,
  "eval_every": 2,
  "checkpoint_every": 2,
  "eval.probe_steps": 20,
}


def tiny_study(name, data_dir, **fields):
  config = study_config.get_config(name)
  config.base_config = os.path.join(REPO, "configs", "regime.py")
  config.base_overrides = study.nest_overrides({**TINY, "dataset.data_dir": data_dir})
  config.progress_bar = False
  for key, value in fields.items():
    config[key] = value
  return config


@pytest.fixture(scope="module")
def grid(tmp_path_factory, digits_dir):
  workdir = str(tmp_path_factory.mktemp("study"))
  config = tiny_study("table2", digits_dir, cells=("baseline", "flt=0.04"), seeds=2)
  return config, workdir, study.run_study(config, workdir)


def final_evals(workdir, cell):
  finals = []
  for seed in (0, 1):
    with open(os.path.join(workdir, cell, f"seed{seed}", "metrics.jsonl")) as f:
      finals.append([r for r in map(json.loads, f) if r["split"] == "eval"][-1])
  return finals


def test_results_hold_mean_and_sample_std_of_each_runs_final_eval(grid):
  _, workdir, results = grid
  with open(os.path.join(workdir, "results.json")) as f:
    assert results == json.load(f)
  assert results["study"] == "table2" and results["complete"]
  assert [c["cell"] for c in results["cells"]] == ["baseline", "flt=0.04"]
  for cell in results["cells"]:
    assert cell["seeds"] == [0, 1] and cell["num_seeds"] == 2 and cell["num_steps"] == 4
    finals = final_evals(workdir, cell["cell"])
    assert all(f["step"] == 4 for f in finals)
    numbers = {k for k, v in finals[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert set(cell["metrics"]) == numbers - {"step"}
    for key in ("gap", "gap_512", "tau", "i2t_r1", "t2i_r1", "uniformity_w2", "zeroshot_top1", "linear_probe_top1"):
      values = np.array([f[key] for f in finals], np.float64)
      assert cell["metrics"][key]["values"] == pytest.approx(list(values))
      assert cell["metrics"][key]["mean"] == pytest.approx(values.mean())
      assert cell["metrics"][key]["std"] == pytest.approx(values.std(ddof=1))
  assert results["cells"][1]["metrics"]["tau"]["values"] == pytest.approx([0.04, 0.04])


def test_table_and_figures(grid):
  _, workdir, results = grid
  with open(os.path.join(workdir, "table.md")) as f:
    table = f.read()
  # The paper's Table 2 baseline gap and image R@1, FLT's text R@1, and our gap beside them.
  for text in ("0.294", "68.23", "82.66", f"{results['cells'][0]['metrics']['gap']['mean']:.3f} ± "):
    assert text in table
  t2i = results["cells"][0]["metrics"]["t2i_r1"]
  assert f"{100 * t2i['mean']:.2f} ± {100 * t2i['std']:.2f}" in table  # percent, like the paper
  for name in ("retrieval_vs_gap.png", "accuracy_vs_uniformity.png", "tau_gap_over_steps.png", "gap_vs_tau.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 10_000, name


def test_second_invocation_trains_nothing_and_partial_studies_aggregate(grid, monkeypatch):
  config, workdir, results = grid
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: pytest.fail("a finished run was retrained"))
  assert study.run_study(config, workdir) == results
  # A run without its final eval line (stopped mid-way) is unfinished and left out.
  log = os.path.join(workdir, "flt=0.04", "seed1", "metrics.jsonl")
  with open(log) as f:
    lines = f.readlines()
  try:
    with open(log, "w") as f:
      f.writelines(line for line in lines if json.loads(line)["step"] < 4)
    partial = study_results.aggregate(config, workdir)
    assert not partial["complete"]
    assert partial["cells"][1]["seeds"] == [0] and partial["cells"][1]["metrics"]["gap"]["std"] == 0.0
  finally:
    with open(log, "w") as f:
      f.writelines(lines)


def test_recorded_command_reproduces_a_seed(grid, tmp_path):
  _, workdir, results = grid
  cell = results["cells"][1]
  assert cell["command"].startswith("python -m experiments.main --config=")
  run = str(tmp_path / "again")
  cmd = shlex.split(cell["command"].format(seed=1, workdir=run))
  cmd[0] = sys.executable  # the interpreter of this environment
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
    "JAX_PLATFORMS": "cpu",
  }
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  with open(os.path.join(run, "metrics.jsonl")) as f:
    final = [r for r in map(json.loads, f) if r["split"] == "eval"][-1]
  for key in ("gap", "tau", "i2t_r1", "uniformity_w2"):
    assert final[key] == pytest.approx(cell["metrics"][key]["values"][1], rel=1e-6), key


def test_overrides_commands_and_directories():
  assert study.flatten_overrides({"a": {"b": 1, "c.d": "x"}, "e": (1, 1)}) == {"a.b": 1, "a.c.d": "x", "e": (1, 1)}
  assert study.nest_overrides({"a.b": 1, "a.c.d": "x", "e": (1, 1)}) == {"a": {"b": 1, "c": {"d": "x"}}, "e": (1, 1)}
  config = study_config.get_config("table3")
  config.base_overrides = study.nest_overrides(
    {"model": {"resnet.layers": (1, 1)}, "optimizer.learning_rate": 1e-4, "dataset.name": "digits_captions"}
  )
  assert study.command(config, "flt=0.1") == (
    "python -m experiments.main --config=configs/regime.py:flt=0.1 --config.seed={seed} "
    "--config.dataset.name=digits_captions '--config.model.resnet.layers=(1, 1)' "
    "--config.optimizer.learning_rate=0.0001 --workdir {workdir}"
  )
  assert study.cell_dirname("flt=0.04") == "flt=0.04" and study.cell_dirname("tr=exp_scaled:4") == "tr=exp_scaled_4"
  assert study_config.get_config("table3").cells == () and study.study_cells(config)[-1] == "hs=1.0"
  assert study_config.get_config("fig4a").base_overrides.to_dict() == {"eval_every": 25}


def test_linear_fit_against_numpy():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(30)
  y = 0.3 - 2.0 * x + 0.1 * rng.standard_normal(30)
  slope, intercept, r2 = study.linear_fit(x, y)
  np.testing.assert_allclose([slope, intercept], np.polyfit(x, y, 1), rtol=1e-10)
  residual = y - np.polyval(np.polyfit(x, y, 1), x)
  np.testing.assert_allclose(r2, 1 - residual @ residual / np.sum((y - y.mean()) ** 2), rtol=1e-10)
  np.testing.assert_allclose(r2, np.corrcoef(x, y)[0, 1] ** 2, rtol=1e-10)
  assert study.linear_fit(x, 1.0 + 3.0 * x)[2] == pytest.approx(1.0)


def test_theorem32_fit_recovers_an_exact_law_after_the_warmup():
  steps = np.arange(25, 1001, 25)
  law = lambda t: 0.2 + 0.5 / np.log(t) ** 2  # Δ = a + b·x with a = 0.2, b = −0.5
  # Two seeds around the law; before the warm-up (t <= 100) the gap is off the line.
  runs = [
    [{"split": "eval", "step": int(t), "gap": law(t) + (s - 0.5) * 0.01 + (t <= 100)} for t in steps] for s in (0, 1)
  ]
  fit = study.theorem32_fit(runs, min_step=100)
  assert fit["r2"] == pytest.approx(1.0) and fit["slope"] == pytest.approx(-0.5)
  assert fit["intercept"] == pytest.approx(0.2)
  assert [p[0] for p in fit["points"]] == list(steps[steps > 100])
  assert fit["points"][0][1] == pytest.approx(-1 / np.log(125) ** 2)


def test_theorem32_fit_stops_at_the_cap_and_fits_the_capped_decay_after_it():
  steps = np.arange(100, 3001, 100)
  law = lambda t: 0.2 + 0.5 / np.log(t) ** 2
  cap = 2600  # τ falls to its cap 0.01 there and stays; after it Δ decays as e^{c − r·t}
  rate = 2e-4
  tau = lambda t: 0.01 if t >= cap else 0.01 + 1e-5 * (cap - t)
  gap = lambda t: law(t) if t < cap else law(cap) * np.exp(-rate * (t - cap))
  # Two seeds whose τ straddle the cap by less than the tolerance; the mean is what counts.
  runs = [
    [{"split": "eval", "step": int(t), "gap": gap(t), "tau": tau(t) * (1 + sign * 1e-4)} for t in steps]
    for sign in (-1, 1)
  ]
  fit = study.theorem32_fit(runs, min_step=100, tau_cap=0.01)
  assert fit["cap_step"] == cap
  assert [p[0] for p in fit["points"]] == list(range(200, cap, 100))
  assert (
    fit["r2"] == pytest.approx(1.0) and fit["slope"] == pytest.approx(-0.5) and fit["intercept"] == pytest.approx(0.2)
  )
  after = fit["after_cap"]
  assert after["from_step"] == cap and [p[0] for p in after["points"]] == list(range(cap, 3001, 100))
  assert after["rate"] == pytest.approx(rate) and after["r2"] == pytest.approx(1.0)
  assert after["intercept"] == pytest.approx(np.log(law(cap)) + rate * cap)
  # No cap given (a fixed τ), or one never reached: one phase, as before.
  for tau_cap in (None, 0.005):
    fit = study.theorem32_fit(runs, min_step=100, tau_cap=tau_cap)
    assert fit["cap_step"] is None and fit["after_cap"] is None and len(fit["points"]) == len(steps) - 1
  # A cap reached at the last two eval points leaves too few to fit after it.
  late = [[r for r in run if r["step"] <= cap + 100] for run in runs]
  assert study.theorem32_fit(late, min_step=100, tau_cap=0.01)["after_cap"] is None


def test_bad_study_and_override_are_config_errors(tmp_path, digits_dir):
  with pytest.raises(ConfigError, match="study='table9' is not valid; choose one of 'table2', 'table3'"):
    study_config.get_config("table9")
  config = tiny_study("table2", digits_dir)
  config.base_overrides = {"model": {"nope": 3}}
  with pytest.raises(ConfigError, match="model.nope"):
    study.run_study(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  # A field every cell has but that is out of range fails at the trainer's boundary, for all
  # cells before the first trains, and before the study's workdir exists.
  for name in ("table2", "fig4b"):
    config = tiny_study(name, digits_dir)
    config.base_overrides = {"optimizer": {"b2": 1.0}}
    with pytest.raises(ConfigError, match=r"optimizer.b2=1.0 is out of range"):
      study.run_study(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()
  done = subprocess.run(
    [sys.executable, "-m", "experiments.main", "--config=configs/study.py:table9", f"--workdir={tmp_path / 'w'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 2 and done.stderr.strip().splitlines() == [
    "error: study='table9' is not valid; choose one of 'table2', 'table3', 'fig4a', 'fig4b', 'imbalance'"
  ]


@pytest.fixture(scope="module")
def fig4b_run(tmp_path_factory, digits_dir):
  """An uninterrupted tiny Fig. 4b: 4 inits of 2 steps, in chunks of 3 (the second padded)."""
  workdir = str(tmp_path_factory.mktemp("fig4b"))
  config = tiny_study("fig4b", digits_dir, num_inits=4, num_steps=2, fig4b_chunk=3)
  return config, workdir, study.run_study(config, workdir)


def test_fig4b_rises_match_an_independent_recomputation(fig4b_run, monkeypatch):
  config, workdir, results = fig4b_run
  assert results["num_inits"] == 4 and results["complete"] and len(results["rises"]) == 4
  # The regime's peak 5e-4 and its cosine over the run's T = 4 steps, without the warm-up.
  assert results["learning_rates"] == pytest.approx([5e-4, 5e-4 * (1 + np.cos(np.pi / 4)) / 2], rel=1e-5)
  np.testing.assert_allclose(results["rises"], np.subtract(results["gap_final"], results["gap_0"]))
  assert results["share_rising"] == np.mean(np.asarray(results["rises"]) > 0)
  assert results["mean_rise"] == pytest.approx(np.mean(results["rises"]))
  assert os.path.getsize(os.path.join(workdir, "fig4b.png")) > 10_000

  # Init 3 (the padded second chunk) again: a plain pmapped step on one device, Δ in float64.
  setup = fig4b.fig4b_setup(config, study.resolve_cells(config)[0], workdir)
  state = train_step.init_state(setup.model, setup.tx, fig4b.init_key(0, 3), (8, 8, 3), 24)
  step = jax.pmap(
    functools.partial(train_step.train_step, model=setup.model, tx=setup.tx, reparam=setup.spec.reparam),
    axis_name=train_step.AXIS,
    devices=jax.devices()[:1],
  )

  def gap(state):
    image, text = setup.model.apply({"params": state.params}, setup.pair_images, setup.pair_tokens)
    return np.linalg.norm(np.asarray(image, np.float64).mean(0) - np.asarray(text, np.float64).mean(0))

  gap_0 = gap(state)
  p_state = jax.tree.map(lambda x: x[None], state)
  for batch in setup.batches:
    p_state, _ = step(p_state, batch)
  gap_2 = gap(jax.tree.map(lambda x: x[0], p_state))
  assert results["gap_0"][3] == pytest.approx(gap_0, abs=1e-5)
  assert results["gap_final"][3] == pytest.approx(gap_2, abs=1e-5)
  assert abs(gap_2 - gap_0) > 1e-4  # the steps moved the gap

  # A second invocation finds every init done and recomputes none.
  monkeypatch.setattr(fig4b, "init_key", lambda *a: pytest.fail("a finished init was recomputed"))
  assert study.run_study(config, workdir) == results


@pytest.mark.parametrize("stop_in", ["first chunk", "second chunk"])
def test_fig4b_stops_on_sigterm_and_resumes_exactly(tmp_path, fig4b_run, monkeypatch, stop_in):
  """SIGTERM inside a chunk: that chunk is dropped, the finished ones are saved, Preempted says
  how far it got; the same call then finishes with the uninterrupted run's every number."""
  config, _, straight = fig4b_run
  workdir = str(tmp_path / "fig4b")
  original, calls = fig4b._Chunks.run, []

  def run_with_signal(self, indices, size, stop):
    calls.append(indices)
    if len(calls) == (1 if stop_in == "first chunk" else 2):
      os.kill(os.getpid(), signal.SIGTERM)  # lands before the chunk's first step
    return original(self, indices, size, stop)

  monkeypatch.setattr(fig4b._Chunks, "run", run_with_signal)
  saved = 0 if stop_in == "first chunk" else 3
  with pytest.raises(Preempted, match=f"SIGTERM: stopped after {saved} of 4 initialisations in "):
    study.run_study(config, workdir)
  monkeypatch.undo()
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back
  if saved:
    partial = study_results.load_results(workdir)
    assert [r["init"] for r in partial["inits"]] == [0, 1, 2] and not partial["complete"]
    assert partial["inits"] == straight["inits"][:3]
  else:
    assert not os.path.exists(os.path.join(workdir, "results.json"))
  assert study.run_study(config, workdir) == straight


def test_scenes_studies_take_the_scenes_regime_and_its_cells():
  table2 = study_config.get_config("table2,scenes")
  assert table2.base_config == "configs/scenes.py"
  # HS keeps the paper's 11.5 expected swapped steps over the regime's 3 000 steps.
  assert table2.cells[5] == "hs=0.00383" and 0.00383 * 3000 == pytest.approx(11.5, abs=0.01)
  assert study_config.get_config("fig4a,scenes").base_overrides.to_dict() == {"eval_every": 100}
  imbalance = study_config.get_config("imbalance")
  assert imbalance.base_config == "configs/scenes.py"
  cells = study.resolve_cells(imbalance)
  assert [c.name for c in cells][:2] == ["detail=1,baseline", "detail=1,flt=0.04"] and len(cells) == 8
  for cell in cells:
    detail, _, method = cell.name.partition(",")
    assert cell.config.dataset.scenes.caption_detail == float(detail.removeprefix("detail="))
    assert cell.config.temperature.mode == ("learned" if method == "baseline" else "fixed")
  with pytest.raises(ConfigError, match="imbalance"):
    study_config.get_config("imbalance,twemoji")
  with pytest.raises(ConfigError, match="study regime"):
    study_config.get_config("table2,coco")


def test_imbalance_table_lists_every_cell_with_its_metrics():
  from modgap_jax.study import tables

  def entry(cell, tau, gap):
    metric = lambda v: {"mean": v, "std": 0.0, "values": [v]}
    keys = ("i2t_r1", "t2i_r1", "zeroshot_top1", "linear_probe_top1")
    return {"cell": cell, "metrics": {"tau": metric(tau), "gap": metric(gap), **{k: metric(0.5) for k in keys}}}

  lines = tables.render_imbalance([entry("detail=0.5,baseline", 0.0123, 0.2), entry("detail=0.5,flt=0.04", 0.04, 0.05)])
  assert lines[2] == "| 0.5 | baseline | 0.012 | 0.200 | 50.00 | 50.00 | 50.00 | 50.00 |"
  assert lines[3].startswith("| 0.5 | flt=0.04 | 0.040 | 0.050 |")
