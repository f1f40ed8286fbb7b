"""The pmapped train step and the whole job, on 4 emulated CPU devices and tiny data."""

import json
import os
import sys

import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from modgap_jax import checkpoint, data, evaluation, metrics, models, train, train_step
from modgap_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shrink(config, *, image_size: int, batch_size: int, overrides):
  """A config cut down for tests: a two-stage ResNet, a one-block text tower, 6 steps, an
  eval and a checkpoint every 3; then ``overrides`` (dotted field → value)."""
  m = config.model
  m.image_size, m.embed_dim, m.context_length = image_size, 16, 24
  m.resnet.layers, m.resnet.width, m.resnet.heads = (1, 1), 8, 2
  m.text.width, m.text.depth, m.text.heads = 16, 1, 2
  config.batch_size = batch_size
  config.num_steps = 6
  config.log_every = 1
  config.eval_every = 3
  config.checkpoint_every = 3
  config.eval.probe_steps = 20
  config.progress_bar = False
  config.update_from_flattened_dict(overrides)
  return config


def digits_config(**overrides):
  """configs/default.py shrunk to 8×8 digits, a two-stage ResNet and a tiny text tower."""
  config = default.get_config()
  config.dataset.name = "digits_captions"
  config.dataset.zero_shot_label = "label"
  config.optimizer.warmup_epochs = 0.1
  return shrink(config, image_size=8, batch_size=64, overrides=overrides)


def random_batch(rng, num_devices, global_batch, image_size, context_length):
  images = rng.standard_normal((global_batch, image_size, image_size, 3)).astype(np.float32)
  tokens = data.tokenize([f"digit {i % 10} number {i}" for i in range(global_batch)], context_length)
  return {
    "image": images.reshape(num_devices, -1, *images.shape[1:]),
    "text": tokens.reshape(num_devices, -1, context_length),
  }


@pytest.mark.parametrize("norm,method", [("group", "baseline"), ("batch", "ts=S3")])
def test_four_device_step_equals_one_device_step(norm, method):
  config = digits_config(**{"model.resnet.norm": norm, "model.resnet.axis_name": "batch"})
  config = default.methods.apply_method(config, method)
  # Adam's first step is lr·g/(|g|+ε): with CLIP's ε = 1e-6, a parameter whose |g| ~ ε turns
  # reduction-order rounding of g into an O(lr) move. ε = 1e-3 makes the step linear in g, so
  # "params within 1e-5" after a step of lr = 1e-3 compares the gradients to ~1e-5 relative.
  config.optimizer.learning_rate = 1e-3
  config.optimizer.eps = 1e-3
  tx, spec = train_step.make_optimizer(config, total_steps=10, warmup_steps=0)
  model = models.create_model(config.model, spec.nu_init)
  state = train_step.init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3), 24)
  batch = random_batch(np.random.default_rng(0), 4, 32, 8, 24)

  step = train_step.make_pmapped_train_step(model, tx, spec.reparam, config.swap)
  new4, logs4 = step(flax.jax_utils.replicate(state), batch)
  one_device = jax.devices()[:1]
  step1 = jax.pmap(
    lambda s, b: train_step.train_step(s, b, model=model, tx=tx, reparam=spec.reparam),
    axis_name=train_step.AXIS,
    devices=one_device,
  )
  global_batch = jax.tree.map(lambda x: x.reshape(1, -1, *x.shape[2:]), batch)
  new1, logs1 = step1(flax.jax_utils.replicate(state, devices=one_device), global_batch)

  for a, b in zip(jax.tree.leaves(new4.params), jax.tree.leaves(new1.params)):
    np.testing.assert_allclose(a[0], b[0], atol=1e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new4.batch_stats), jax.tree.leaves(new1.batch_stats)):
    np.testing.assert_allclose(a[0], b[0], atol=1e-5, rtol=1e-5)
  for key in ("loss", "gap", "beta", "grad_norm"):
    np.testing.assert_allclose(logs4[key], np.full(4, logs1[key][0]), rtol=1e-5, atol=1e-6)
  # Every device ends with the same replica.
  for leaf in jax.tree.leaves(new4.params):
    np.testing.assert_array_equal(leaf[0], leaf[3])


def test_train_step_logs_match_references():
  config = digits_config()
  tx, spec = train_step.make_optimizer(config, total_steps=10, warmup_steps=0)
  model = models.create_model(config.model, spec.nu_init)
  state = train_step.init_state(model, tx, jax.random.PRNGKey(1), (8, 8, 3), 24)
  batch = random_batch(np.random.default_rng(1), 4, 16, 8, 24)
  _, logs = train_step.make_pmapped_train_step(model, tx, spec.reparam, config.swap)(
    flax.jax_utils.replicate(state), batch
  )
  flat = lambda x: np.asarray(x).reshape(-1, *x.shape[2:])
  image_emb, text_emb = model.apply({"params": state.params}, flat(batch["image"]), flat(batch["text"]))
  hx, hy = np.float64(image_emb), np.float64(text_emb)
  np.testing.assert_allclose(logs["gap"][0], np.linalg.norm(hx.mean(0) - hy.mean(0)), rtol=1e-5)
  np.testing.assert_allclose(logs["tau"][0], 0.07, rtol=1e-6)
  z = (1 / 0.07) * hx @ hy.T
  lse = lambda a, axis: np.log(np.exp(a - a.max()).sum(axis)) + a.max()
  ref = 0.5 * (np.mean(lse(z, 1) - np.diag(z)) + np.mean(lse(z, 0) - np.diag(z)))
  np.testing.assert_allclose(logs["loss"][0], ref, rtol=1e-5)


def test_weight_decay_only_on_kernels():
  params = {
    "image": {"conv": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)}, "positional_embedding": jnp.ones((4, 3))},
    "temperature": {"nu": jnp.float32(1.0)},
  }
  mask = train_step.decay_mask(params)
  assert mask == {
    "image": {"conv": {"kernel": True, "bias": False}, "positional_embedding": False},
    "temperature": {"nu": False},
  }


def test_learning_rate_warmup_then_cosine():
  config = digits_config()
  lr = train_step.learning_rate_schedule(config.optimizer, total_steps=100, warmup_steps=10)
  peak = config.optimizer.learning_rate
  np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.5 * peak, peak], rtol=1e-6)
  np.testing.assert_allclose(lr(55), peak * 0.5 * (1 + np.cos(np.pi * 45 / 90)), rtol=1e-5)
  assert float(lr(100)) == pytest.approx(0.0, abs=1e-9)


def test_embedding_metrics_against_numpy():
  rng = np.random.default_rng(2)
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  image_emb = unit(rng.standard_normal((30, 6)))
  text_to_image = np.repeat(np.arange(30), 2)  # two captions per image
  text_emb = unit(image_emb[text_to_image] + 0.3 * rng.standard_normal((60, 6)))
  out = evaluation.embedding_metrics(image_emb, text_emb, text_to_image, beta=10.0, loss_batch_size=8, gap_pairs=20)
  paired = image_emb[text_to_image]
  np.testing.assert_allclose(out["gap"], np.linalg.norm(paired.mean(0) - text_emb.mean(0)), rtol=1e-5)
  np.testing.assert_allclose(out["alignment"], np.mean(np.sum((paired - text_emb) ** 2, 1)), rtol=1e-5)
  sample = np.random.default_rng(0).choice(60, size=20, replace=False)
  np.testing.assert_allclose(
    out["gap_512"], np.linalg.norm(paired[sample].mean(0) - text_emb[sample].mean(0)), rtol=1e-5
  )
  # Eval loss: batches of 8 (image, first caption) pairs, weighted by size.
  first = text_emb[0::2]
  losses = []
  for s in range(0, 30, 8):
    x, y = image_emb[s : s + 8], first[s : s + 8]
    z = 10.0 * x @ y.T
    lse = lambda a, axis: np.log(np.exp(a).sum(axis))
    losses.append((0.5 * (np.mean(lse(z, 1) - np.diag(z)) + np.mean(lse(z, 0) - np.diag(z))), len(x)))
  np.testing.assert_allclose(
    out["loss"], np.average([loss for loss, _ in losses], weights=[w for _, w in losses]), rtol=1e-5
  )
  scores = image_emb @ text_emb.T
  top1 = text_to_image[np.argmax(scores, axis=1)] == np.arange(30)
  np.testing.assert_allclose(out["i2t_r1"], top1.mean())
  assert out["uniformity_w2"] == pytest.approx(float(metrics.uniformity_w2(np.vstack([image_emb, text_emb]))))


EVAL_KEYS = set(evaluation.EVAL_KEYS)


def test_train_and_evaluate_end_to_end_on_digits(tmp_path, digits_dir):
  workdir = str(tmp_path / "run")
  config = digits_config(**{"dataset.data_dir": digits_dir})
  final = train.train_and_evaluate(config, workdir)
  for name in ("config.json", "plan.json", "metrics.jsonl", "report.md", "curves.png", "embeddings_pca.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  train_lines = [r for r in records if r["split"] == "train"]
  eval_lines = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in train_lines] == [1, 2, 3, 4, 5, 6]
  assert [r["step"] for r in eval_lines] == [3, 6]
  for r in records:
    assert {"step", "split", "loss", "beta", "tau"} <= set(r)
    np.testing.assert_allclose(r["beta"] * r["tau"], 1.0, rtol=1e-5)
  for r in eval_lines:
    assert EVAL_KEYS <= set(r)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "zeroshot_top1", "linear_probe_top1"):
      assert 0.0 <= r[key] <= 1.0, key
    assert r["i2t_r1"] <= r["i2t_r5"] <= r["i2t_r10"]
  assert final["gap"] == pytest.approx(eval_lines[-1]["gap"])
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  # The step plan, from the split's size: full batches per epoch, warm-up 0.1 epoch, 6 steps.
  per_epoch = len(data.load_examples("digits_captions", "train", digits_dir)) // config.batch_size
  plan = json.load(open(os.path.join(workdir, "plan.json")))
  assert plan == {"steps_per_epoch": per_epoch, "total_steps": 6, "warmup_steps": round(0.1 * per_epoch)}
  assert [r["epoch"] for r in train_lines] == pytest.approx([s / per_epoch for s in range(1, 7)])
  report = open(os.path.join(workdir, "report.md")).read()
  assert "| modality gap Δ (all pairs) |" in report
  for phase in ("dataset build", "train-step compilation", "train steps", "evaluation"):
    assert f"| {phase}" in report, phase


def test_multistep_dispatch_keeps_logs_evals_and_checkpoints_at_their_steps(tmp_path, digits_dir):
  # 4 steps per dispatch, but evaluations and checkpoints every 3: dispatches stop at 3 and 6.
  config = digits_config(
    **{"dataset.data_dir": digits_dir, "steps_per_dispatch": 4, "num_steps": 7, "eval.linear_probe": False}
  )
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 8))
  assert [r["step"] for r in records if r["split"] == "eval"] == [3, 6, 7]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6", "7"]


def test_study_regime_keeps_slrt_relative_to_its_own_nu_rate():
  from configs import regime

  assert regime.get_config("baseline").temperature.lr_multiplier == 100.0
  assert regime.get_config("slrt").temperature.lr_multiplier == pytest.approx(10.0)
  assert regime.get_config("flt=0.04").temperature.mode == "fixed"


def test_next_stop_never_crosses_an_eval_or_checkpoint():
  config = digits_config(**{"steps_per_dispatch": 10, "eval_every": 25, "checkpoint_every": 20})
  stops, step = [], 0
  while step < 64:
    step = train.next_stop(step, 64, config)
    stops.append(step)
  assert stops == [10, 20, 25, 35, 40, 50, 60, 64]


def test_scanned_steps_equal_single_steps():
  config = digits_config()
  tx, spec = train_step.make_optimizer(config, 100, 2)
  model = models.create_model(config.model, spec.nu_init)
  state = train_step.init_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3), 24)
  rng = np.random.default_rng(0)
  batches = [random_batch(rng, 4, 64, 8, 24) for _ in range(3)]
  single = train_step.make_pmapped_train_step(model, tx, spec.reparam, config.swap)
  p_state = flax.jax_utils.replicate(state)
  losses = []
  for batch in batches:
    p_state, logs = single(p_state, batch)
    losses.append(float(logs["loss"][0]))
  for unroll in (False, True):
    scanned = train_step.MultiStep(
      train_step.streamed_steps, dict(step_fn=train_step.bind_step(model, tx, spec.reparam, config.swap), unroll=unroll)
    )
    stacked = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches)
    q_state, q_logs = scanned.run(3, flax.jax_utils.replicate(state), stacked)
    np.testing.assert_allclose(q_logs["loss"][0], losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p_state.params), jax.tree.leaves(q_state.params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def train_uninterrupted(tmp_path_factory, config) -> str:
  """The workdir of ``config`` trained in one go: the run that interrupted ones must match."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  train.train_and_evaluate(config, workdir)
  return workdir


def check_killed_run_resumes_exactly(config, tmp_path, monkeypatch) -> list[dict]:
  """Trains ``config`` straight, and again killed just after its step-3 checkpoint and then
  resumed; asserts both logs are bit-equal and returns the straight run's log."""
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(config, straight)

  resumed = str(tmp_path / "resumed")
  original_is_due = checkpoint.Checkpointer.is_due

  killed_at = []

  def is_due_or_die(self, step):
    # The kill lands at the first dispatch boundary after the step-3 checkpoint (step 4 with
    # one step per dispatch, 5 or 6 with more), after that step is logged but not saved.
    if step > 3:
      killed_at.append(step)
      raise KeyboardInterrupt("simulated kill")
    return original_is_due(self, step)

  monkeypatch.setattr(checkpoint.Checkpointer, "is_due", is_due_or_die)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, resumed)
  monkeypatch.undo()
  lines = [json.loads(line) for line in open(os.path.join(resumed, "metrics.jsonl"))]
  assert max(r["step"] for r in lines) == killed_at[0] > 3
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["3"]
  train.train_and_evaluate(config, resumed)

  read = lambda d: [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
  a, b = read(straight), read(resumed)
  assert [(r["step"], r["split"]) for r in a] == [(r["step"], r["split"]) for r in b]
  for ra, rb in zip(a, b):
    assert ra["loss"] == rb["loss"], ra["step"]  # bit-exact: same data, same RNG, same state
    assert ra["tau"] == rb["tau"]
  return a


@pytest.mark.parametrize(
  "overrides",
  [
    {},  # the device-resident split, one step per dispatch
    {"steps_per_dispatch": 2, "dataset.mismatch_fraction": 0.3, "dataset.augment_min_scale": 0.5},
    {"steps_per_dispatch": 3, "dataset.on_device": "no"},  # host batches, scanned
  ],
  ids=["resident", "resident-k2-augment", "streamed-k3"],
)
def test_resumed_run_reproduces_uninterrupted_run(tmp_path, digits_dir, monkeypatch, overrides):
  config = digits_config(**{"dataset.data_dir": digits_dir, "eval_every": 100, "eval.linear_probe": False, **overrides})
  check_killed_run_resumes_exactly(config, tmp_path, monkeypatch)


@pytest.mark.parametrize(
  "arg,field,value",
  [
    ("baseline", "temperature.mode", "learned"),
    ("flt=0.04", "temperature.tau_init", 0.04),
    ("flt=0.04", "temperature.mode", "fixed"),
    ("ts=S3", "temperature.schedule.tau_end", 0.05),
    ("ts=S0", "temperature.mode", "scheduled"),
    ("tr=softplus", "temperature.reparam", "softplus"),
    ("tr=exp_scaled:4", "temperature.scale", 4.0),
    ("slrt", "temperature.lr_multiplier", 0.1),
    ("slrt=0.5", "temperature.lr_multiplier", 0.5),
    ("hs=1e-3", "swap.method", "hard"),
    ("ss=5e-2", "swap.p", 0.05),
  ],
)
def test_method_variants(arg, field, value):
  config = default.get_config(arg)
  node = config
  for name in field.split("."):
    node = node[name]
  assert node == value
  assert config.method == arg


@pytest.mark.parametrize(
  "arg,match",
  [("bogus", "method='bogus'"), ("ts=S9", "ts='S9'"), ("flt=abc", "flt='abc'"), ("hs=2", "hs=2.0 is out of range")],
)
def test_bad_method_is_a_config_error(arg, match):
  with pytest.raises(ConfigError, match=match):
    default.get_config(arg)


def test_config_overrides_reach_the_config(monkeypatch):
  """Overrides through the entry point's own flags, as `python -m experiments.main` parses them."""
  from experiments import main as entry

  argv = [
    "prog",
    f"--config={REPO}/configs/default.py:ts=S2",
    "--config.batch_size=64",
    "--config.swap.p=0.5",
    "--config.temperature.beta_cap=50.0",
    "--workdir=/unused",
  ]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags registers overrides from sys.argv
  try:
    entry._parse_flags(argv)
    config = entry.FLAGS.config
    assert config.batch_size == 64 and config.swap.p == 0.5 and config.temperature.beta_cap == 50.0
    assert config.temperature.schedule.tau_end == 0.04 and config.method == "ts=S2"
  finally:
    entry.FLAGS.unparse_flags()


def test_metrics_log_cuts_back_to_the_resumed_step(tmp_path):
  from modgap_jax import run_io

  path = str(tmp_path / "metrics.jsonl")
  with open(path, "w") as f:
    for step in range(1, 6):
      f.write(json.dumps({"step": step, "split": "train", "loss": float(step)}) + "\n")
    f.write('{"step": 6, "split": "tr')  # a line torn by a kill mid-write
  log = run_io.MetricsLog(path, resume_step=3)
  log.write(4, "train", {"loss": np.float32(0.5), "tau": np.array(0.07)})
  log.close()
  records = run_io.read_metrics(path)
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert records[-1] == {"step": 4, "split": "train", "loss": 0.5, "tau": pytest.approx(0.07)}


def read_events(workdir):
  """{tag: {step: value}} and image tags from the workdir's event files (TFRecord framing:
  u64 length, u32 crc, payload, u32 crc), parsed with tensorboardX's own protobufs."""
  import glob
  import struct

  from tensorboardX.proto import event_pb2

  scalars, images = {}, set()
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      while header := f.read(12):
        (length,) = struct.unpack("<Q", header[:8])
        event = event_pb2.Event.FromString(f.read(length))
        f.read(4)
        for value in event.summary.value:
          if value.HasField("image"):
            images.add(value.tag)
          else:
            scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars, images


def test_event_files_hold_the_logged_scalars_and_the_pca_figure(tmp_path, digits_dir):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(
    digits_config(**{"dataset.data_dir": digits_dir, "num_steps": 3, "eval.linear_probe": False}), workdir
  )
  scalars, images = read_events(workdir)
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  for r in records:
    for key in ("loss", "tau", "gap"):
      assert scalars[f"{r['split']}/{key}"][r["step"]] == pytest.approx(r[key], rel=1e-6)
  assert images == {"embeddings_pca"}

  quiet = str(tmp_path / "quiet")
  train.train_and_evaluate(
    digits_config(**{"dataset.data_dir": digits_dir, "num_steps": 1, "tensorboard": False, "eval.linear_probe": False}),
    quiet,
  )
  assert not [f for f in os.listdir(quiet) if f.startswith("events.")]
