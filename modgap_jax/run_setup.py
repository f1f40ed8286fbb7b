"""One path from a config to a runnable model: ``setup_run(config, workdir) -> Run``.

Every task that trains or reads a training run goes through :func:`setup_run`: the trainer,
each cell of a study, Fig. 4b, and the analysis of a run directory. It builds, in order, and
writes nothing:

1. the checked config and the spec of the training batches (:func:`check_config`: every
   field that needs no data; with ``init_from``, the model config and image normalisation
   become the pretrained checkpoint's, ``pretrained.run``), and the workdir's identity
   (``workdir.check_same_run``);
2. the train and eval splits, with the file options of the datasets read from the user's
   files (``data.file_options``);
3. the tokenizer: the workdir's ``tokenizer.json`` on resume, else made from the training
   captions (not written yet), or CLIP's own read from ``dataset.vocab_file``, checked
   against ``model.vocab_size``;
4. the data mode (``data_modes.choose_data_mode``: resident or streamed), with its checks of
   the batch against the split, on-device limits, crops and stream options;
5. the step plan (:class:`step_plan.StepPlan`: steps per epoch, total and warm-up steps), checked
   against the workdir's ``plan.json`` on resume;
6. the learning-rate schedule, the optimizer and temperature spec, and the model;
7. the evaluator, whose zero-shot prompts come from the data.

So every refusal of a config, the ones that need the data included, comes before a run
creates its workdir. The initial parameters are the one thing left out:
:meth:`Run.initial_state` makes them, or loads them from ``init_from`` (seconds for a large
model, and an analysis of a trained run never needs them). Once the run holds its workdir,
:func:`write_run_files` writes ``config.json``, ``tokenizer.json`` and ``plan.json``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Hashable
from typing import Any

import jax
import ml_collections
import optax

from modgap_jax import data, data_modes, models, run_io, swap, temperature
from modgap_jax import train_step as train_step_lib
from modgap_jax import workdir as workdir_lib
from modgap_jax.data import registry, scenes, text
from modgap_jax.data.scenes import config as scenes_config
from modgap_jax.errors import ConfigError, check_choice, check_number
from modgap_jax.evaluator import Evaluator
from modgap_jax.pretrained import run as pretrained_run
from modgap_jax.step_plan import PLAN_FILE, StepPlan, plan_steps, read_plan

TOKENIZER_FILE = "tokenizer.json"
# The built datasets, and the scenes world, which is generated (no files, no builder).
DATASET_NAMES = (*data.DATASETS, scenes.NAME)
# The tokenizers a run may use: those made from the data, and CLIP's own from its vocabulary file.
TOKENIZER_CHOICES = (*data.TOKENIZER_KINDS, "clip")

# The config field behind each field of the training stream's spec that has one, so that the
# spec's checks (the only ones these fields get) name what the user set.
_STREAM_FIELDS = {
  "global_batch_size": "batch_size",
  "image_size": "model.image_size",
  "context_length": "model.context_length",
  "mean": "dataset.mean",
  "std": "dataset.std",
  "crop_scale": "dataset.crop_scale",
  "crop_ratio": "dataset.crop_ratio",
}


# ----------------------------------------------------------------------------------------
# The checks that need no data.
# ----------------------------------------------------------------------------------------


def check_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> data.TrainStream:
  """Every field that needs no data, before any data is read.

  Fields that a library spec owns are checked by that spec or its check function (the
  temperature spec, ``models.check_model_config``, ``swap.check_swap``, the resident split's,
  and the :class:`data.TrainStream` returned here); the rest here. :func:`setup_run` calls it
  first, and the study calls it for every cell before any cell reads data.

  Args:
    config: the run's config.
    num_devices: this process's devices; all local devices by default.

  Returns:
    The spec of the run's training batches, without its tokenizer (made from the data later).
  """
  num_devices = jax.local_device_count() if num_devices is None else num_devices
  pretrained_run.resolve_config(config)  # init_from: the checkpoint's model and preprocessing, before any check
  check_choice("dataset.name", config.dataset.name, DATASET_NAMES)
  check_choice("dataset.tokenizer", config.dataset.tokenizer, TOKENIZER_CHOICES)
  if config.dataset.tokenizer == "clip":
    pretrained_run.check_vocab_file(config.dataset)
  if config.dataset.name == scenes.NAME:
    scenes.world_from_config(config.dataset, config.model.image_size)  # the world checks its fields
    scenes_config.check_sizes(config.dataset)
    if config.dataset.tokenizer == "words":
      data_modes.check_generated_options(config)
    elif not config.dataset.scenes.num_train:
      raise ConfigError(
        f"dataset.tokenizer={config.dataset.tokenizer!r} needs a fixed pool of scenes with dataset=scenes "
        "(dataset.scenes.num_train > 0): only the world's own 'words' tokenizer captions the unbounded "
        "stream on the devices"
      )
  if config.dataset.tokenizer == "bpe":  # the byte tokenizer's fixed size is checked once it is made
    text.bpe.check_vocab_size(config.model.vocab_size, "model.vocab_size")
  swap.check_swap(config.swap.method, config.swap.p)
  temperature.spec_from_config(config.temperature, schedule_duration=1)  # a spec checks its fields
  models.check_model_config(config.model)
  data_modes.check_on_device(config)
  check_choice("nonfinite", config.get("nonfinite", "stop"), train_step_lib.NONFINITE_POLICIES)
  check_number("steps_per_dispatch", config.steps_per_dispatch, 0, None, integer=True)
  check_number("dataset.num_workers", config.dataset.num_workers, -1, None, integer=True)
  for field in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    check_number(field, config[field], 1, None, integer=True)
  check_number("num_steps", config.num_steps, integer=True)
  if config.num_steps <= 0:
    check_number("num_epochs", config.num_epochs, 0, None, low_inclusive=False)
  opt = config.optimizer
  check_number("optimizer.learning_rate", opt.learning_rate, 0, None, low_inclusive=False)
  check_number("optimizer.warmup_epochs", opt.warmup_epochs, 0)
  for beta in ("b1", "b2"):
    check_number(f"optimizer.{beta}", opt[beta], 0, 1, high_inclusive=False)
  check_number("optimizer.eps", opt.eps, 0, None, low_inclusive=False)
  check_number("optimizer.weight_decay", opt.weight_decay, 0)
  check_number("optimizer.grad_clip_norm", opt.grad_clip_norm, 0)
  check_number("eval.gap_pairs", config.eval.gap_pairs, 2, None, integer=True)
  check_number("eval.probe_steps", config.eval.probe_steps, 1, None, integer=True)
  check_number("eval.probe_l2", config.eval.probe_l2, 0)
  check_number("eval.batch_size", config.eval.batch_size, 1, None, integer=True)
  # batch_size, seed, the image and token sizes, mean, std and the crop: checked by the spec.
  return data.TrainStream(
    global_batch_size=config.batch_size,
    num_devices=num_devices,
    image_size=config.model.image_size,
    context_length=config.model.context_length,
    seed=config.seed,
    mean=config.dataset.mean,
    std=config.dataset.std,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    crop_scale=config.dataset.crop_scale,
    crop_ratio=config.dataset.crop_ratio,
    names=_STREAM_FIELDS,
  )


def eval_split_of(dataset_config: ml_collections.ConfigDict, *, say=None) -> str:
  """``dataset.eval_split``, or when '' the dataset's own choice (``data.resolve_eval_split``;
  the scenes world's held-out split is 'test')."""
  if dataset_config.name == scenes.NAME:
    return check_choice("dataset.eval_split", dataset_config.eval_split or "test", ("test",))
  return data.resolve_eval_split(dataset_config, say=say)


def steps_per_dispatch(config: ml_collections.ConfigDict) -> int:
  """``config.steps_per_dispatch``, with 0 resolved: 1 on CPU, 10 on accelerators."""
  k = int(config.steps_per_dispatch)
  return k if k > 0 else (1 if jax.default_backend() == "cpu" else 10)


# ----------------------------------------------------------------------------------------
# Data and tokenizer.
# ----------------------------------------------------------------------------------------


class DataCache:
  """Loaded splits and made tokenizers, kept between the runs of one process (a study's cells).

  Both are pure functions of what keys them (the dataset's fields; the tokenizer kind, size
  and training split), so a run set up with a cache is the run set up without one.
  """

  def __init__(self):
    self._items: dict[Hashable, Any] = {}

  def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
    if key not in self._items:
      self._items[key] = make()
    return self._items[key]


def _cached(cache: DataCache | None, key: Hashable, make: Callable[[], Any]) -> Any:
  return make() if cache is None else cache.get(key, make)


def _split_key(config: ml_collections.ConfigDict, split: str) -> tuple:
  if config.dataset.name == scenes.NAME:  # a rendered split: the world and the seeds fix it
    fields = config.dataset.scenes.to_json(sort_keys=True)
    return ("scenes", split, fields, config.model.image_size, config.seed, config.dataset.tokenizer)
  files = data.file_options(config.dataset)
  return ("split", config.dataset.name, split, config.dataset.data_dir or None, tuple(sorted(files.items())))


def load_splits(
  config: ml_collections.ConfigDict, cache: DataCache | None = None
) -> tuple[data.Examples, data.Examples]:
  """The run's train and eval splits, built on first use, with the dataset's file options.

  The scenes world's splits are rendered instead (:func:`scenes_splits`).
  """
  if config.dataset.name == scenes.NAME:
    return scenes_splits(config, cache)
  data_dir = config.dataset.data_dir or None
  files = data.file_options(config.dataset)  # path and build options of coco_raw / image_text_folder

  def load(split):
    return _cached(
      cache, _split_key(config, split), lambda: data.load_examples(config.dataset.name, split, data_dir, **files)
    )

  return load(config.dataset.train_split), load(config.dataset.eval_split)


def scenes_splits(config: ml_collections.ConfigDict, cache: DataCache | None = None) -> tuple[data.Examples, ...]:
  """The scenes world's (train, eval) splits, materialised (``data.scenes.config``'s docstring).

  train: the first ``num_probe`` scenes of the 'train' stream of ``dataset.scenes.seed`` (the
  linear probe's), or with another tokenizer than 'words' the run's fixed pool, the first
  ``num_train`` scenes of seed ``config.seed``, trained as a resident split. eval: the held-out
  'test' split of ``dataset.scenes.seed``.
  """
  fields = config.dataset.scenes
  world = scenes.world_from_config(config.dataset, config.model.image_size)
  if config.dataset.tokenizer == "words":
    train_seed, train_count = int(fields.seed), int(fields.num_probe)
  else:
    train_seed, train_count = int(config.seed), int(fields.num_train)

  def make(seed, split, count):
    return _cached(
      cache, ("scenes", world, seed, split, count), lambda: scenes.make_examples(world, seed, split, count)
    )

  return make(train_seed, "train", train_count), make(int(fields.seed), "test", world.num_test)


def load_tokenizer(
  config: ml_collections.ConfigDict,
  train_split: data.Examples,
  workdir: str | None,
  cache: DataCache | None = None,
) -> tuple[data.Tokenizer, bool]:
  """The run's tokenizer, and whether it came from the workdir's ``tokenizer.json``.

  On resume the workdir's tokenizer is reloaded; otherwise BPE is trained on the training
  split's captions only, with at most ``model.vocab_size`` ids, so the text tower's embedding
  table always covers it. Nothing is written here (see :func:`write_run_files`).
  """
  path = os.path.join(workdir, TOKENIZER_FILE) if workdir else None
  saved = path is not None and os.path.exists(path)
  if saved:
    with open(path) as f:
      tokenizer = data.tokenizer_from_json(f.read())
  elif config.dataset.name == scenes.NAME and config.dataset.tokenizer == "words":
    tokenizer = scenes.world_from_config(config.dataset, config.model.image_size).tokenizer()
  elif config.dataset.tokenizer == "clip":  # CLIP's own, from the vocabulary file the user names
    vocab = config.dataset.vocab_file
    tokenizer = _cached(cache, ("clip", vocab), lambda: text.load_clip_tokenizer(vocab))
  else:
    kind, size = config.dataset.tokenizer, config.model.vocab_size
    key = ("tokenizer", kind, size, _split_key(config, config.dataset.train_split))
    captions = lambda: [c for caps in train_split.captions() for c in caps]
    tokenizer = _cached(cache, key, lambda: data.make_tokenizer(kind, captions(), size))
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(
      f"model.vocab_size={config.model.vocab_size} is smaller than the {config.dataset.tokenizer} "
      f"tokenizer's {tokenizer.vocab_size} ids; set it to at least {tokenizer.vocab_size}"
    )
  return tokenizer, saved


# ----------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------


def _check_plan(workdir: str | None, plan: StepPlan) -> None:
  """A resumed run (or a run read back) must plan the steps its checkpoints were taken under."""
  saved = read_plan(workdir) if workdir else None
  if saved is not None and saved != plan:
    raise ConfigError(
      f"{workdir} holds a run planned as {saved.to_dict()}, but its data now give {plan.to_dict()}: "
      "its training split changed since the run began"
    )


def make_training(config: ml_collections.ConfigDict, plan: StepPlan) -> tuple[optax.Schedule, data_modes.Training]:
  """The warm-up + cosine learning-rate schedule of ``plan``, and the model, optimizer and
  temperature spec it trains (MATH.md §5.1)."""
  schedule = train_step_lib.learning_rate_schedule(config.optimizer, plan.total_steps, plan.warmup_steps)
  tx, spec = train_step_lib.make_optimizer(config, plan.total_steps, plan.warmup_steps, schedule=schedule)
  return schedule, data_modes.Training(model=models.create_model(config.model, spec.nu_init), tx=tx, spec=spec)


def initial_state(
  config: ml_collections.ConfigDict, training: data_modes.Training, key: jax.Array | None = None
) -> train_step_lib.TrainState:
  """The train state before step 1, from ``key`` (default ``PRNGKey(config.seed)``): a random
  initialisation, or with ``config.init_from`` the checkpoint's variables (``pretrained.run``)."""
  key = jax.random.PRNGKey(config.seed) if key is None else key
  if pretrained_run.init_from(config):
    return pretrained_run.initial_state(config, training, key)
  image_shape = (config.model.image_size, config.model.image_size, 3)
  return train_step_lib.init_state(training.model, training.tx, key, image_shape, config.model.context_length)


@dataclasses.dataclass
class Run:
  """Everything a run needs before its first step, every check done; see the module docstring.

  Attributes:
    config: the checked config.
    workdir: the run's directory (None for a run set up without one); nothing is in it yet
      unless the run is resumed.
    num_devices: this process's devices.
    train_split, eval_split: the splits (the train split also feeds the linear probe).
    tokenizer: the run's tokenizer; ``tokenizer_saved`` when it came from the workdir.
    stream: the spec of the training batches, with the tokenizer.
    plan: the step plan.
    schedule: the towers' learning rate per step.
    training: the model, its optimizer and temperature spec.
    data_mode: where the training batches come from (not started).
    evaluator: embeds splits and computes the eval metrics.
    steps_per_dispatch: steps per dispatch, resolved for this backend.
  """

  config: ml_collections.ConfigDict
  workdir: str | None
  num_devices: int
  train_split: data.Examples
  eval_split: data.Examples
  tokenizer: data.Tokenizer
  tokenizer_saved: bool
  stream: data.TrainStream
  plan: StepPlan
  schedule: optax.Schedule
  training: data_modes.Training
  data_mode: data_modes.DataMode
  evaluator: Evaluator
  steps_per_dispatch: int

  @property
  def model(self) -> models.CLIP:
    return self.training.model

  @property
  def spec(self) -> temperature.TemperatureSpec:
    return self.training.spec

  def initial_state(self) -> train_step_lib.TrainState:
    """The train state before step 1 (host arrays, from ``PRNGKey(config.seed)``)."""
    return initial_state(self.config, self.training)


def setup_run(
  config: ml_collections.ConfigDict,
  workdir: str | None,
  *,
  cache: DataCache | None = None,
  num_devices: int | None = None,
) -> Run:
  """Checks ``config`` against its data and builds the run; writes nothing.

  Args:
    config: a training config (``configs/default.py``'s fields).
    workdir: the run's directory: a resumed run's tokenizer and plan are read from it, and a
      directory that holds a different run is refused. None: a fresh run, no directory.
    cache: splits and tokenizers to share with other runs of this process.
    num_devices: this process's devices; all local devices by default.

  Raises:
    ConfigError: one line naming the field, for any config this run cannot train, the
      checks that need the data included.
  """
  num_devices = jax.local_device_count() if num_devices is None else num_devices
  stream = check_config(config, num_devices)
  config.dataset.eval_split = eval_split_of(config.dataset, say=registry.say_once if jax.process_index() == 0 else None)
  if workdir:
    workdir_lib.check_same_run(workdir, config)
  train_split, eval_split = load_splits(config, cache)
  tokenizer, tokenizer_saved = load_tokenizer(config, train_split, workdir, cache)
  stream = dataclasses.replace(stream, tokenizer=tokenizer)
  per_dispatch = steps_per_dispatch(config)
  data_mode = data_modes.choose_data_mode(config, train_split, stream, steps_per_dispatch=per_dispatch)
  plan = plan_steps(config, data_mode.examples_per_epoch)
  _check_plan(workdir, plan)
  schedule, training = make_training(config, plan)
  evaluator = Evaluator(training.model, config, train_split, eval_split, num_devices, tokenizer)
  return Run(
    config=config,
    workdir=workdir,
    num_devices=num_devices,
    train_split=train_split,
    eval_split=eval_split,
    tokenizer=tokenizer,
    tokenizer_saved=tokenizer_saved,
    stream=stream,
    plan=plan,
    schedule=schedule,
    training=training,
    data_mode=data_mode,
    evaluator=evaluator,
    steps_per_dispatch=per_dispatch,
  )


def write_run_files(run: Run) -> None:
  """``config.json``, ``tokenizer.json`` and ``plan.json``: what identifies the run in its workdir."""
  run_io.write_json(os.path.join(run.workdir, workdir_lib.CONFIG_FILE), run.config.to_dict())
  run_io.write_text(os.path.join(run.workdir, TOKENIZER_FILE), run.tokenizer.to_json())
  run_io.write_json(os.path.join(run.workdir, PLAN_FILE), run.plan.to_dict())


def read_run_config(run_dir: str) -> ml_collections.ConfigDict:
  """A run directory's ``config.json``, with the fields added since it was written set to the
  values that keep its behaviour (``workdir.ADDED_FIELDS``)."""
  stored = workdir_lib.read_config(run_dir)
  if stored is None:
    raise ConfigError(f"run directory {run_dir!r} has no {workdir_lib.CONFIG_FILE}")
  return ml_collections.ConfigDict(_with_defaults(stored, workdir_lib.ADDED_FIELDS))


def _with_defaults(stored: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
  out = dict(stored)
  for key, value in defaults.items():
    if isinstance(value, dict):
      out[key] = _with_defaults(out.get(key, {}), value)
    else:
      out.setdefault(key, value)
  return out
