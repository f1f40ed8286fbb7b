"""Faults and bad input: non-finite steps, resume identity, damaged checkpoints, preemption,
one process per workdir, and a table of bad inputs through the entry point."""

import concurrent.futures
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modgap_jax import checkpoint, study, train, train_step
from modgap_jax import workdir as workdir_lib
from modgap_jax.data import resident
from modgap_jax.errors import ConfigError, NonFiniteError, Preempted, check_number, check_range
from tests.test_train import REPO, digits_config, train_uninterrupted

BAD_STEP = 4  # the injected fault hits the step that starts from state.step == 4, i.e. step 5


def small_config(digits_dir, **overrides):
  return digits_config(**{"dataset.data_dir": digits_dir, "eval_every": 100, "eval.linear_probe": False, **overrides})


@pytest.fixture(scope="module")
def straight(tmp_path_factory, digits_dir):
  """An uninterrupted 6-step run of small_config, for the interrupted ones to match."""
  return train_uninterrupted(tmp_path_factory, small_config(digits_dir))


def read_log(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def poison_step(monkeypatch, bad_step=BAD_STEP):
  """Makes the images of one step NaN, inside the compiled step (the resident split's gather)."""
  original = resident.device_batch

  def device_batch(split, key, step, sampling, axis_name=None):
    batch = original(split, key, step, sampling, axis_name=axis_name)
    return {**batch, "image": jnp.where(step == bad_step, jnp.nan, batch["image"])}

  monkeypatch.setattr(resident, "device_batch", device_batch)


# ------------------------------------------------------------------------------ non-finite


def test_nonfinite_code_names_each_part():
  params = {"a": jnp.ones(3), "b": jnp.array([1.0, jnp.inf])}
  assert int(train_step.nonfinite_code(jnp.float32(1), jnp.float32(1), {"a": jnp.ones(3)})) == 0
  assert int(train_step.nonfinite_code(jnp.float32(np.nan), jnp.float32(1), {"a": jnp.ones(3)})) == 1
  assert int(train_step.nonfinite_code(jnp.float32(1), jnp.float32(np.inf), params)) == 2 + 4
  assert train_step.describe_nonfinite(5) == "loss, parameters"


def test_a_nonfinite_step_stops_the_run_before_it_is_saved_or_logged(tmp_path, digits_dir, monkeypatch):
  workdir = str(tmp_path / "run")
  poison_step(monkeypatch)
  with pytest.raises(NonFiniteError, match=r"non-finite loss.* at step 5; .*last good checkpoint is step 3") as e:
    train.train_and_evaluate(small_config(digits_dir), workdir)
  assert e.value.step == 5
  assert [r["step"] for r in read_log(workdir)] == [1, 2, 3, 4]  # nothing from step 5 on
  assert all(np.isfinite(r["loss"]) for r in read_log(workdir))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3"]
  assert not os.path.exists(os.path.join(workdir, "report.md"))
  # The last good checkpoint is intact: it restores, and its parameters are finite.
  monkeypatch.undo()
  config = small_config(digits_dir)
  tx, spec = train_step.make_optimizer(config, 6, 0)
  from modgap_jax import models

  model = models.create_model(config.model, spec.nu_init)
  template = train_step.init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3), 24)
  ckpt = checkpoint.Checkpointer(workdir, every=3, keep=3)
  restored = ckpt.restore(template)
  ckpt.close()
  assert int(restored.step) == 3
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored.params))


def test_skip_policy_drops_the_update_and_counts_it(tmp_path, digits_dir, monkeypatch):
  poison_step(monkeypatch)
  final = train.train_and_evaluate(small_config(digits_dir, nonfinite="skip"), str(tmp_path / "run"))
  records = read_log(str(tmp_path / "run"))
  train_lines = {r["step"]: r for r in records if r["split"] == "train"}
  assert [train_lines[s]["nonfinite_skips"] for s in range(1, 7)] == [0, 0, 0, 0, 1, 1]
  # Loss, gradient norm and the would-be parameters: all three bits.
  assert train_lines[5]["loss"] is None and train_lines[5]["nonfinite"] == 7
  assert np.isfinite(train_lines[6]["loss"]) and final["nonfinite_skips"] == 1
  assert np.isfinite(final["gap"])


# ------------------------------------------------------------------------------ resume identity


def test_config_changes_lists_only_fields_that_change_the_run():
  old = {"seed": 0, "log_every": 10, "optimizer": {"learning_rate": 5e-4}, "model": {"layers": [1, 1]}}
  new = {
    "seed": 0,
    "log_every": 1,
    "optimizer": {"learning_rate": 1e-3},
    "model": {"layers": (1, 1)},
    "nonfinite": "stop",
  }
  assert workdir_lib.config_changes(old, new) == [
    ("nonfinite", "(absent)", "stop"),
    ("optimizer.learning_rate", 5e-4, 1e-3),
  ]
  # A field added since the run started is no change at the value that keeps the old behaviour.
  added = workdir_lib.ADDED_FIELDS
  assert workdir_lib.config_changes(old, new, added) == [("optimizer.learning_rate", 5e-4, 1e-3)]
  assert workdir_lib.config_changes(old, {**new, "nonfinite": "skip"}, added)[0] == ("nonfinite", "(absent)", "skip")


def test_restarting_with_a_different_config_is_refused_before_anything_is_written(tmp_path, digits_dir):
  workdir = str(tmp_path / "run")
  config = small_config(digits_dir, num_steps=3)
  train.train_and_evaluate(config, workdir)
  before = {name: open(os.path.join(workdir, name), "rb").read() for name in ("config.json", "metrics.jsonl")}
  changed = small_config(digits_dir, num_steps=3, **{"optimizer.learning_rate": 1e-3, "model.resnet.width": 16})
  with pytest.raises(ConfigError, match=r"model\.resnet\.width: 8 -> 16, optimizer\.learning_rate: 0\.0005 -> 0\.001"):
    train.train_and_evaluate(changed, workdir)
  assert before == {name: open(os.path.join(workdir, name), "rb").read() for name in before}
  # Watching the run differently is allowed.
  train.train_and_evaluate(small_config(digits_dir, num_steps=3, log_every=2, eval_every=1), workdir)


def test_a_resumed_run_whose_step_plan_changed_is_refused_before_anything_is_written(tmp_path, digits_dir):
  workdir = tmp_path / "run"
  config = small_config(digits_dir, num_steps=1)
  train.train_and_evaluate(config, str(workdir))
  plan = json.loads((workdir / "plan.json").read_text())
  # As if the training split had changed size since: another epoch, another warm-up.
  (workdir / "plan.json").write_text(json.dumps({**plan, "steps_per_epoch": plan["steps_per_epoch"] + 1}))
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"}
  with pytest.raises(ConfigError, match=r"holds a run planned as .* but its data now give .*steps_per_epoch"):
    train.train_and_evaluate(config, str(workdir))
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.name != ".lock"} == before


# ------------------------------------------------------------------------------ checkpoint damage


def damage(checkpoint_dir):
  for root, _, files in os.walk(checkpoint_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"\xff\xfe not a checkpoint")


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, digits_dir, capfd, straight):
  config = small_config(digits_dir)

  workdir = str(tmp_path / "run")
  train.train_and_evaluate(small_config(digits_dir, num_steps=6), workdir)
  damage(os.path.join(workdir, "checkpoints", "6"))
  capfd.readouterr()
  os.remove(os.path.join(workdir, "report.md"))
  train.train_and_evaluate(config, workdir)  # restores step 3, trains 4..6 again
  warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "checkpoint 6" in warnings[0] and "unreadable" in warnings[0]
  assert [(r["step"], r["loss"]) for r in read_log(workdir)] == [(r["step"], r["loss"]) for r in read_log(straight)]
  assert os.path.exists(os.path.join(workdir, "report.md"))

  for step in ("3", "6"):
    damage(os.path.join(workdir, "checkpoints", step))
  with pytest.raises(ConfigError, match="no readable checkpoint"):
    train.train_and_evaluate(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]  # nothing deleted


# ------------------------------------------------------------------------------ preemption


def signal_after(monkeypatch, step_to_signal, signum=signal.SIGTERM):
  original = checkpoint.Checkpointer.is_due

  def is_due(self, step):
    if step == step_to_signal:
      os.kill(os.getpid(), signum)
    return original(self, step)

  monkeypatch.setattr(checkpoint.Checkpointer, "is_due", is_due)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_the_current_step_and_the_resumed_run_is_identical(
  tmp_path, digits_dir, monkeypatch, signum, straight
):
  config = small_config(digits_dir)

  workdir = str(tmp_path / "run")
  signal_after(monkeypatch, 4, signum)
  with pytest.raises(Preempted, match="at step 4 of 6"):
    train.train_and_evaluate(config, workdir)
  monkeypatch.undo()
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "4"]
  assert max(r["step"] for r in read_log(workdir)) == 4
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back
  train.train_and_evaluate(config, workdir)
  assert read_log(workdir) == read_log(straight)


def test_the_study_stops_cleanly_and_carries_on(tmp_path, digits_dir, monkeypatch):
  from configs import study as study_config
  from tests.test_study import TINY

  config = study_config.get_config("table2")
  config.cells = ("baseline",)
  config.seeds = 1
  config.base_config = os.path.join(REPO, "configs", "regime.py")
  config.base_overrides = study.nest_overrides({**TINY, "dataset.data_dir": digits_dir})
  config.progress_bar = False
  workdir = str(tmp_path / "study")
  signal_after(monkeypatch, 2)
  with pytest.raises(Preempted, match="at step 2 of 4"):
    study.run_study(config, workdir)
  monkeypatch.undo()
  results = study.run_study(config, workdir)
  assert results["complete"] and results["cells"][0]["seeds"] == [0]


# A digits run through the entry point, small enough to compile and train in seconds.
TINY_DIGITS_RUN = (
  "--config=configs/default.py",
  "--config.dataset.name=digits_captions",
  "--config.dataset.zero_shot_label=label",
  "--config.model.image_size=8",
  "--config.model.resnet.layers=(1, 1)",
  "--config.model.resnet.width=8",
  "--config.model.text.width=16",
  "--config.model.text.depth=1",
  "--config.model.text.heads=2",
  "--config.batch_size=64",
  "--config.progress_bar=False",
)


def test_sigterm_through_the_entry_point_exits_0_with_the_resume_command(tmp_path, digits_dir):
  workdir = tmp_path / "run"
  cmd = [
    sys.executable,
    "-m",
    "experiments.main",
    *TINY_DIGITS_RUN,
    f"--workdir={workdir}",
    "--config.num_steps=100000",
    "--config.log_every=1",
    "--config.checkpoint_every=1000",
    f"--config.dataset.data_dir={digits_dir}",
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  log = workdir / "metrics.jsonl"
  for _ in range(1200):  # wait until training has logged a few steps
    if log.exists() and len(log.read_text().splitlines()) >= 3:
      break
    if proc.poll() is not None:
      break
    import time

    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err
  lines = [line for line in err.splitlines() if line.strip()]
  assert (
    len(lines) == 1
    and lines[0].startswith("stopped: SIGTERM: stopped at step ")
    and "resume with: python -m" in lines[0]
  ), err
  step = int(lines[0].split("at step ")[1].split()[0])
  assert os.listdir(workdir / "checkpoints") == [str(step)]
  assert max(json.loads(line)["step"] for line in log.read_text().splitlines()) == step


# ------------------------------------------------------------------------------ one process per workdir


def test_a_busy_workdir_is_refused_and_a_dead_holder_does_not_block(tmp_path, digits_dir):
  workdir = str(tmp_path / "run")
  config = small_config(digits_dir, num_steps=1)
  with workdir_lib.WorkdirLock(workdir):
    with pytest.raises(ConfigError, match=f"is in use by another process \\(pid {os.getpid()}\\)"):
      train.train_and_evaluate(config, workdir)
  assert os.listdir(workdir) == [".lock"]
  # A holder killed with SIGKILL leaves the file but not the lock.
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; sys.path.insert(0, sys.argv[1]); "
      "from modgap_jax import workdir as w; l = w.WorkdirLock(sys.argv[2]).__enter__(); "
      "print('held', flush=True); time.sleep(60)",
      REPO,
      workdir,
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(ConfigError, match="in use"):
    train.train_and_evaluate(config, workdir)
  holder.kill()
  holder.wait()
  train.train_and_evaluate(config, workdir)


# ------------------------------------------------------------------------------ bad input table

D = "--config=configs/default.py"
DIGITS = ("--config.dataset.name=digits_captions", "--config.dataset.zero_shot_label=label")
# What a case reads before it is refused: nothing (False), the built digits (True), or the
# user's files (FILES): a COCO root "{coco}" or a caption folder "{folder}", built into the
# case's own data_dir.
FILES = "files"
COCO = ("--config.dataset.name=coco_raw", "--config.dataset.path={coco}", "--config.dataset.store_size=16")
FOLDER = ("--config.dataset.name=image_text_folder", "--config.dataset.path={folder}")
# (flags, a piece of the one error line, what the case reads before failing)
BAD_INPUTS = [
  ((f"{D}:warp",), "method='warp'", False),
  ((f"{D}:ts=S9",), "ts='S9'", False),
  ((f"{D}:hs=2",), "hs=2.0 is out of range", False),
  ((D, "--config.temperature.mode=hot"), "temperature.mode='hot'", False),
  ((D, "--config.temperature.tau_init=0"), "temperature.tau_init", False),
  ((D, "--config.temperature.tau_init=nan"), "temperature.tau_init", False),
  ((D, "--config.temperature.lr_multiplier=inf"), "temperature.lr_multiplier=inf must be finite", False),
  ((D, "--config.seed=2147483648"), "seed=2147483648 is out of range", False),
  ((D, "--config.dataset.tokenizer=bpe", "--config.model.vocab_size=10"), "model.vocab_size=10 must be", False),
  ((D, "--config.dataset.crop_ratio=(2.0, 1.0)"), "dataset.crop_ratio=(2.0, 1.0)", False),
  (("--config=configs/dynamics.py", "--config.temperature.mode=capped"), "temperature.mode='capped'", False),
  (("--config=configs/dynamics.py", "--config.time.t_max=inf"), "time.t_max=inf must be finite", False),
  ((D, "--config.dataset.name=imagenet"), "imagenet", False),
  ((D, "--config.dataset.tokenizer=wordpiece"), "dataset.tokenizer='wordpiece'", False),
  (("--config=configs/nope.py",), "nope.py", False),
  ((D, "--config.dataset.on_device=maybe"), "dataset.on_device='maybe'", False),
  ((D, "--config.dataset.on_device=no", "--config.dataset.mismatch_fraction=0.1"), "need the on-device split", False),
  ((D, "--config.dataset.augment_min_scale=0"), "dataset.augment_min_scale", False),
  ((D, "--config.dataset.mismatch_fraction=1.5"), "dataset.mismatch_fraction", False),
  ((D, "--config.dataset.std=(0.0, 1.0, 1.0)"), "dataset.std", False),
  ((D, "--config.dataset.mean=(0.5, 0.5)"), "dataset.mean", False),
  ((D, "--config.steps_per_dispatch=-1"), "steps_per_dispatch", False),
  ((D, "--config.optimizer.learning_rate=-1"), "optimizer.learning_rate=-1", False),
  ((D, "--config.optimizer.learning_rate=0"), "optimizer.learning_rate=0", False),
  ((D, "--config.optimizer.learning_rate=nan"), "optimizer.learning_rate=nan must be finite", False),
  ((D, "--config.optimizer.learning_rate=inf"), "optimizer.learning_rate=inf must be finite", False),
  ((D, "--config.optimizer.b1=1.0"), "optimizer.b1=1.0", False),
  ((D, "--config.optimizer.b2=-0.1"), "optimizer.b2=-0.1", False),
  ((D, "--config.optimizer.eps=0"), "optimizer.eps", False),
  ((D, "--config.optimizer.weight_decay=-0.1"), "optimizer.weight_decay", False),
  ((D, "--config.optimizer.grad_clip_norm=-1"), "optimizer.grad_clip_norm", False),
  ((D, "--config.optimizer.warmup_epochs=-1"), "optimizer.warmup_epochs", False),
  ((D, "--config.seed=-1"), "seed=-1", False),
  ((D, "--config.batch_size=0"), "batch_size=0", False),
  ((D, "--config.model.image_size=-8"), "model.image_size=-8", False),
  ((D, "--config.model.context_length=0"), "model.context_length=0", False),
  ((D, "--config.num_steps=2.5"), "num_steps", False),
  (("--config=configs/analyze.py", "--config.embeddings=missing.npz"), "missing.npz", False),
  ((D, "--config.num_epochs=0"), "num_epochs", False),
  ((D, "--config.log_every=0"), "log_every", False),
  ((D, "--config.eval_every=0"), "eval_every", False),
  ((D, "--config.checkpoint_every=-5"), "checkpoint_every", False),
  ((D, "--config.keep_checkpoints=0"), "keep_checkpoints", False),
  ((D, "--config.swap.p=2"), "swap.p", False),
  ((D, "--config.swap.method=soft2"), "swap.method='soft2'", False),
  ((D, "--config.nonfinite=ignore"), "nonfinite='ignore'", False),
  ((D, "--config.eval.gap_pairs=1"), "eval.gap_pairs", False),
  ((D, "--config.eval.probe_steps=0"), "eval.probe_steps", False),
  ((D, "--config.eval.probe_l2=-1"), "eval.probe_l2", False),
  ((D, "--config.eval.batch_size=0"), "eval.batch_size", False),
  ((D, "--config.model.embed_dim=0"), "model.embed_dim", False),
  ((D, "--config.model.resnet.width=0"), "model.resnet.width", False),
  ((D, "--config.nope=1"), "no such config field", False),
  ((D, "--workdir="), "--workdir is empty", False),
  ((D, "--config.batch_size=abc"), "batch_size", False),
  ((D, "--config.task=bogus"), "config.task='bogus'", False),
  (("--config=configs/study.py:table9",), "study='table9'", False),
  ((D, "--num_processes=2"), "--coordinator_address, --num_processes and --process_id go together", False),
  ((D, "--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"), "--process_id=2", False),
  (
    (D, "--config.dataset.on_device=yes", "--config.dataset.crop_scale=(0.5,1.0)"),
    "crop_scale needs the stream",
    False,
  ),
  # Refused only once the data are read: split sizes, the data mode, the tokenizer, the files.
  ((D, *DIGITS, "--config.batch_size=100000"), "batch_size=100000 exceeds", True),
  ((D, *DIGITS, "--config.dataset.on_device=no", "--config.batch_size=2048"), "batch_size=2048 exceeds", True),
  ((D, *DIGITS, "--config.dataset.train_split=train[:40]"), "exceeds the 40 examples", True),
  ((D, *DIGITS, "--config.dataset.tokenizer=byte", "--config.model.vocab_size=100"), "byte tokenizer's", True),
  (
    (D, *DIGITS, "--config.dataset.crop_scale=(0.5,1.0)", "--config.dataset.mismatch_fraction=0.1"),
    "need the on-device split",
    True,
  ),
  ((D, *COCO, "--config.dataset.eval_split=val", "--config.dataset.on_device=yes"), "needs an in-memory split", FILES),
  ((D, *COCO, "--config.dataset.eval_split=val", "--config.dataset.augment_min_scale=0.5"), "on-device split", FILES),
  # Named explicitly: without Karpathy's file, only the default ('' -> val) falls back.
  ((D, *COCO, "--config.dataset.eval_split=test"), "split='test' of dataset='coco_raw' is empty", FILES),
  ((D, *FOLDER), "exceeds the", FILES),
  ((D, "--config.dataset.name=image_text_folder"), "dataset.path is empty", FILES),
]


def _syntax_error_file(directory):
  path = os.path.join(directory, "broken.py")
  with open(path, "w") as f:
    f.write("import ml_collections\n\ndef get_config(:\n  pass\n")
  return path


def _raising_file(directory):
  path = os.path.join(directory, "raising.py")
  with open(path, "w") as f:
    f.write("import ml_collections\n\n\ndef get_config():\n  return 1 / 0\n")
  return path


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory, digits_dir, colour_folder):
  """Runs every bad input through the entry point, a few processes at a time."""
  from tests.test_data_files import _write_coco

  root = tmp_path_factory.mktemp("bad")
  _write_coco(root / "coco")
  sources = {"coco": str(root / "coco"), "folder": colour_folder}
  cases = [(tuple(f.format(**sources) for f in flags), needle, reads) for flags, needle, reads in BAD_INPUTS]
  cases.append(((f"--config={_syntax_error_file(str(root))}",), "broken.py line 3: SyntaxError", False))
  cases.append(((f"--config={_raising_file(str(root))}",), "raising.py line 5: ZeroDivisionError", False))

  def run(index):
    flags, _, reads_data = cases[index]
    case_dir = root / f"case{index}"
    data_dir = {True: digits_dir, FILES: str(case_dir / "files"), False: str(case_dir / "tfds")}[reads_data]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "TFDS_DATA_DIR": data_dir}
    done = subprocess.run(
      # The case's flags come last, so a case can override --workdir too.
      [sys.executable, "-m", "experiments.main", f"--workdir={case_dir / 'w'}", *flags],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    return case_dir, done

  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return cases, list(pool.map(run, range(len(cases))))


def test_check_range_and_check_number_accept_exactly_their_interval():
  inf, nan = float("inf"), float("nan")
  # (value, low, high, low_inclusive, high_inclusive, inside?) against the interval's definition.
  cases = [
    (0.0, 0.0, None, True, True, True),
    (0.0, 0.0, None, False, True, False),
    (1e300, 0.0, None, True, True, True),
    (inf, 0.0, None, True, True, False),  # a missing bound is open: inf is never inside
    (-inf, None, 1.0, True, True, False),
    (nan, 0.0, 1.0, True, True, False),
    (1.0, 0.0, 1.0, True, False, False),
    (1.0, 0.0, 1.0, True, True, True),
  ]
  for value, low, high, low_inc, high_inc, inside in cases:
    kwargs = dict(low_inclusive=low_inc, high_inclusive=high_inc)
    if inside:
      assert check_range("f", value, low, high, **kwargs) == value
    else:
      with pytest.raises(ConfigError, match=r"^f=.* is out of range; it must lie in "):
        check_range("f", value, low, high, **kwargs)
  assert (
    check_number("n", np.int64(7), 1, integer=True) == 7 and type(check_number("n", np.int64(7), integer=True)) is int
  )
  for value, message in (
    (True, "must be a number"),
    ("3", "must be a number"),
    (inf, "must be finite"),
    (nan, "must be finite"),
  ):
    with pytest.raises(ConfigError, match=f"^x=.* {message}$"):
      check_number("x", value)
  with pytest.raises(ConfigError, match="^k=3.0 must be an integer$"):
    check_number("k", 3.0, integer=True)


def test_bad_input_table_covers_distinct_inputs_and_names_each_field(bad_input_results):
  """The table is at least 40 different inputs, 10 of them refused only once the data are
  read; every case that sets one config field is refused by a line that names that field."""
  cases, results = bad_input_results
  assert len(cases) >= 40 and len({flags for flags, _, _ in cases}) == len(cases)
  assert sum(reads is not False for _, _, reads in cases) >= 10
  base = {"dataset.name", "dataset.zero_shot_label", "dataset.path", "dataset.store_size", "dataset.eval_split"}
  named = 0
  for (flags, _, _), (_, done) in zip(cases, results):
    overrides = dict(f.removeprefix("--config.").split("=", 1) for f in flags if f.startswith("--config."))
    fields = set(overrides) - base
    if len(fields) == 1:
      field = fields.pop()
      line = done.stderr.strip().splitlines()[-1]
      named += 1
      # The field (its full or last name), or the value the data refused (a split's name).
      assert field in line or field.rsplit(".", 1)[-1] in line or overrides[field] in line, (flags, line)
  assert named >= 30


@pytest.mark.parametrize("index", range(len(BAD_INPUTS) + 2))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(bad_input_results, index):
  cases, results = bad_input_results
  flags, needle, reads_data = cases[index]
  case_dir, done = results[index]
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert done.returncode == 2, (flags, done.stderr[-2000:])
  if reads_data == FILES:  # the first build of the user's files logs its progress first
    lines = lines[-1:] if len([line for line in lines if line.startswith("error: ")]) == 1 else lines
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (flags, lines)
  assert not (case_dir / "w").exists()  # the checks that read data came first too
  if not reads_data:
    assert not (case_dir / "tfds").exists()  # rejected before any dataset was built


def test_a_nonfinite_run_exits_3_with_one_line(tmp_path, digits_dir):
  # A learning rate of 1e30 overflows the parameters at the first step.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.main",
      *TINY_DIGITS_RUN,
      "--config.num_steps=5",
      "--config.optimizer.learning_rate=1e30",
      "--config.optimizer.warmup_epochs=0",
      f"--config.dataset.data_dir={digits_dir}",
      f"--workdir={tmp_path / 'w'}",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert done.returncode == 3 and len(lines) == 1, done.stderr[-2000:]
  assert lines[0].startswith("error: non-finite ") and "no checkpoint was saved before it" in lines[0]
  assert not os.listdir(tmp_path / "w" / "checkpoints")


# ------------------------------------------------------------------------------ multi-host


def test_cluster_detection():
  from experiments.main import cluster_detected

  assert not cluster_detected({})
  assert not cluster_detected({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "7"})  # one task: one process
  assert cluster_detected({"SLURM_NTASKS": "4"})
  assert cluster_detected({"OMPI_COMM_WORLD_SIZE": "2"})
  assert cluster_detected({"TPU_WORKER_HOSTNAMES": "a,b"})


def test_two_processes_match_one_process_with_as_many_devices(tmp_path, digits_dir):
  """2 processes × 2 emulated CPU devices (gloo collectives) against 1 process × 4 devices."""
  import socket

  flags = [
    *TINY_DIGITS_RUN,
    "--config.num_steps=20",
    "--config.log_every=1",
    "--config.eval_every=20",
    "--config.checkpoint_every=10",
    "--config.eval.linear_probe=False",
    f"--config.dataset.data_dir={digits_dir}",
  ]

  def launch(workdir, devices, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen(
      [sys.executable, "-m", "experiments.main", *flags, f"--workdir={workdir}", *extra],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  multi = tmp_path / "multi"
  procs = [
    launch(multi, 2, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}")
    for i in range(2)
  ]
  single = launch(tmp_path / "single", 4)
  for proc in [*procs, single]:
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
  read = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
  a, b = read(multi), read(tmp_path / "single")
  assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
  assert len([r for r in a if r["split"] == "train"]) == 20
  for ra, rb in zip(a, b):
    for key in ("loss", "tau", "gap"):
      assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-5), (ra["step"], key)
  assert sorted(os.listdir(multi / "checkpoints")) == ["10", "20"]
  assert (multi / "report.md").exists()
