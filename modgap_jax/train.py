"""``train_and_evaluate(config, workdir)``: the main job.

Trains CLIP from scratch with the configured temperature or swap method, evaluates every
MATH.md §2 metric on the held-out split, checkpoints with orbax, and writes ``config.json``,
``metrics.jsonl``, ``report.md`` and figures into ``workdir``. A run restarted with the same
workdir resumes from its latest checkpoint: same step, same data order, same randomness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from typing import Any

import flax.jax_utils
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from modgap_jax import (
  checkpoint,
  data,
  evaluation,
  events,
  models,
  numerics,
  preemption,
  run_io,
  swap,
  temperature,
  timing,
)
from modgap_jax import train_step as train_step_lib
from modgap_jax import workdir as workdir_lib
from modgap_jax.data import resident, text
from modgap_jax.errors import ConfigError, NonFiniteError, Preempted, check_choice, check_number
from modgap_jax.plots import training as training_plots
from modgap_jax.train_step import TrainState, init_state, learning_rate_schedule, make_optimizer

# A train split up to this size (images + tokens, per device) is kept on the devices.
RESIDENT_LIMIT_BYTES = 2 << 30
ON_DEVICE_CHOICES = ("auto", "yes", "no")

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

TRAIN_LOG_KEYS = (
  "loss",
  "loss_i2t",
  "loss_t2i",
  "positive_logit",
  "negative_logit",
  "nu",
  "beta",
  "tau",
  "grad_norm",
  "gap",
)


class Evaluator:
  """Embeds whole splits with pmapped encoders and computes every MATH.md §2 metric."""

  def __init__(
    self,
    model: models.CLIP,
    config: ml_collections.ConfigDict,
    train_split: data.Examples,
    eval_split: data.Examples,
    num_devices: int,
    tokenizer: data.Tokenizer,
  ):
    self.config = config
    self.tokenizer = tokenizer
    self.num_devices = num_devices
    self.train_split, self.eval_split = train_split, eval_split
    self.image_size = config.model.image_size
    self.context_length = config.model.context_length
    self.batch_size = _round_up(config.eval.batch_size, num_devices)
    self._encode_image = jax.pmap(functools.partial(model.apply, train=False, method=models.CLIP.encode_image))
    self._encode_text = jax.pmap(functools.partial(model.apply, method=models.CLIP.encode_text))
    label = config.dataset.zero_shot_label
    self.label_key = label if label and label in eval_split.labels() else None
    self.class_tokens = None
    if self.label_key and config.eval.zero_shot:
      classnames, templates = data.zero_shot_classes(config.dataset.name, self.label_key, split=eval_split)
      prompts = [template.format(c) for c in classnames for template in templates]
      self.class_tokens = tokenizer.encode(prompts, self.context_length)
      self.class_shape = (len(classnames), len(templates))

  def embed_images(self, variables: Any, split: data.Examples) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """[N, d] image embeddings in index order, and the split's labels."""
    chunks = []
    batches = data.eval_image_batches(
      split,
      batch_size=self.batch_size,
      num_devices=self.num_devices,
      image_size=self.image_size,
      mean=self.config.dataset.mean,
      std=self.config.dataset.std,
    )
    for batch in data.prefetch(batches):
      emb = np.asarray(self._encode_image(variables, batch["image"]))
      chunks.append(emb.reshape(-1, emb.shape[-1])[batch["mask"].reshape(-1)])
    return np.concatenate(chunks), split.labels()

  def embed_texts(self, variables: Any, split: data.Examples) -> tuple[np.ndarray, np.ndarray]:
    """[M, d] caption embeddings and each caption's image index."""
    chunks, image_index = [], []
    batches = data.eval_text_batches(
      split,
      batch_size=self.batch_size,
      num_devices=self.num_devices,
      context_length=self.context_length,
      tokenizer=self.tokenizer,
    )
    for batch in batches:
      emb = np.asarray(self._encode_text(variables, batch["text"]))
      mask = batch["mask"].reshape(-1)
      chunks.append(emb.reshape(-1, emb.shape[-1])[mask])
      image_index.append(batch["image_index"].reshape(-1)[mask])
    return np.concatenate(chunks), np.concatenate(image_index)

  def embed_tokens(self, variables: Any, tokens: np.ndarray) -> np.ndarray:
    n = len(tokens)
    padded = np.zeros((_round_up(n, self.num_devices), tokens.shape[1]), tokens.dtype)
    padded[:n] = tokens
    emb = np.asarray(self._encode_text(variables, padded.reshape(self.num_devices, -1, tokens.shape[1])))
    return emb.reshape(-1, emb.shape[-1])[:n]

  def __call__(self, variables: Any, beta: float) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """All eval metrics, and the eval embeddings (for figures)."""
    image_emb, labels = self.embed_images(variables, self.eval_split)
    text_emb, text_to_image = self.embed_texts(variables, self.eval_split)
    out = evaluation.embedding_metrics(
      image_emb,
      text_emb,
      text_to_image,
      beta=beta,
      loss_batch_size=self.config.batch_size,
      gap_pairs=self.config.eval.gap_pairs,
      seed=self.config.seed,
    )
    class_emb = probe_train = None
    if self.label_key and self.class_tokens is not None:
      class_emb = self.embed_tokens(variables, self.class_tokens).reshape(*self.class_shape, -1)
    if self.label_key and self.config.eval.linear_probe:
      train_emb, train_labels = self.embed_images(variables, self.train_split)
      probe_train = (train_emb, train_labels[self.label_key])
    out.update(
      evaluation.classification_metrics(
        image_emb,
        labels.get(self.label_key),
        class_emb,
        probe_train,
        probe_l2=self.config.eval.probe_l2,
        probe_steps=self.config.eval.probe_steps,
      )
    )
    return out, {"image": image_emb, "text": text_emb, "text_to_image": text_to_image}


def _round_up(n: int, multiple: int) -> int:
  return numerics.ceil_div(n, multiple) * multiple


def _variables(state: TrainState) -> dict[str, Any]:
  return train_step_lib.model_variables(state.params, state.batch_stats)


def plan_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int, int]:
  """(steps per epoch, total steps, warm-up steps) from the epoch-based config."""
  per_epoch = data.steps_per_epoch(num_train_examples, config.batch_size)
  if config.num_steps > 0:
    total = int(config.num_steps)
  else:  # num_epochs > 0: checked by check_config
    total = max(1, round(config.num_epochs * per_epoch))
  warmup = round(float(config.optimizer.warmup_epochs) * per_epoch)
  return per_epoch, total, warmup


def check_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> data.TrainStream:
  """The trainer's one validation boundary: every field that needs no data, before any write.

  Fields that a library spec owns are checked by that spec or its check function (the
  temperature spec, ``models.check_model_config``, ``swap.check_swap``, the resident split's,
  and the :class:`data.TrainStream` returned here); the rest here. Past this point the
  trainer, the specs and the modules below trust the config. ``train_and_evaluate`` calls it
  first, and the study calls it for every cell before any cell trains.

  Args:
    config: the run's config.
    num_devices: this process's devices; all local devices by default.

  Returns:
    The spec of the run's training batches, without its tokenizer (made from the data later).
  """
  num_devices = jax.local_device_count() if num_devices is None else num_devices
  check_choice("dataset.name", config.dataset.name, data.DATASETS)
  check_choice("dataset.tokenizer", config.dataset.tokenizer, data.TOKENIZER_KINDS)
  if config.dataset.tokenizer == "bpe":  # the byte tokenizer's fixed size is checked once it is made
    text.bpe.check_vocab_size(config.model.vocab_size, "model.vocab_size")
  swap.check_swap(config.swap.method, config.swap.p)
  temperature.spec_from_config(config.temperature, schedule_duration=1)  # a spec checks its fields
  models.check_model_config(config.model)
  check_choice("dataset.on_device", config.dataset.on_device, ON_DEVICE_CHOICES)
  resident.Augment(config.dataset.augment_min_scale)
  resident.check_mismatch_fraction(config.dataset.mismatch_fraction)
  if config.dataset.on_device == "no":
    _check_stream_options(config)
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


def load_tokenizer(config: ml_collections.ConfigDict, train_split: data.Examples, workdir: str) -> data.Tokenizer:
  """The run's tokenizer: reloaded from the workdir on resume, else made from the train captions.

  BPE is trained on the training split's captions only, with at most ``model.vocab_size`` ids,
  so the text tower's embedding table always covers it.
  """
  path = os.path.join(workdir, "tokenizer.json")
  if os.path.exists(path):
    with open(path) as f:
      tokenizer = data.tokenizer_from_json(f.read())
  else:
    captions = [c for caps in train_split.captions() for c in caps]
    tokenizer = data.make_tokenizer(config.dataset.tokenizer, captions, config.model.vocab_size)
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(
      f"model.vocab_size={config.model.vocab_size} is smaller than the {config.dataset.tokenizer} "
      f"tokenizer's {tokenizer.vocab_size} ids; set it to at least {tokenizer.vocab_size}"
    )
  return tokenizer


def _use_resident(config: ml_collections.ConfigDict, split: data.Examples, num_devices: int) -> bool:
  """Whether the train split goes on the devices (``dataset.on_device``: auto, yes or no)."""
  mode = config.dataset.on_device
  if config.dataset.crop_scale:  # random-resized crops are made by the host stream
    if mode == "yes":
      raise ConfigError("dataset.crop_scale needs the streamed pipeline; set dataset.on_device='no' or 'auto'")
    return False
  if mode == "no":
    return False
  side = config.model.image_size
  approx_bytes = len(split) * (side * side * 3 + 4 * 4 * config.model.context_length)
  fits = isinstance(split, data.InMemoryExamples) and approx_bytes <= RESIDENT_LIMIT_BYTES
  if mode == "yes" and not isinstance(split, data.InMemoryExamples):
    raise ConfigError(f"dataset.on_device='yes' needs an in-memory split; {config.dataset.name!r} is read lazily")
  return mode == "yes" or fits


def _check_stream_options(config: ml_collections.ConfigDict) -> None:
  if config.dataset.mismatch_fraction or config.dataset.augment_min_scale < 1.0:
    raise ConfigError(
      "dataset.mismatch_fraction and dataset.augment_min_scale need the on-device split "
      "(dataset.on_device='auto' or 'yes' on a dataset that fits)"
    )


class _Batches:
  """Where a run's training batches come from: the resident split, or a host stream.

  ``stream`` is the batches' spec (its tokenizer set); the resident split draws its batches
  on the devices, with the spec's size, seed and normalisation.
  """

  def __init__(self, config, train_split, stream: data.TrainStream, model, tx, spec, start_step, total_steps):
    self.resident = _use_resident(config, train_split, stream.num_devices)
    if self.resident:
      split = resident.make_resident_split(
        train_split,
        stream.tokenizer,
        image_size=stream.image_size,
        context_length=stream.context_length,
        seed=stream.seed,
        mismatch_fraction=config.dataset.mismatch_fraction,
      )
      sampling = resident.Sampling(
        len(train_split),
        stream.global_batch_size,
        stream.mean,
        stream.std,
        resident.Augment(config.dataset.augment_min_scale),
      )
      self._inputs = flax.jax_utils.replicate((split, resident.data_key(stream.seed)))
      self.steps = train_step_lib.make_resident_multistep(
        model, tx, spec.reparam, config.swap, sampling, config.nonfinite
      )
    else:
      _check_stream_options(config)
      # grain makes the same batches as data.train_batches, step for step, in worker
      # processes: JPEG decoding and resizing of a lazily read split stay off this thread.
      self._stream = data.grain_train_batches(
        train_split,
        stream,
        start_step,
        num_workers=input_workers(config, train_split),
        buffer_size=2 * steps_per_dispatch(config),
      )
      self.steps = train_step_lib.make_streamed_multistep(model, tx, spec.reparam, config.swap, config.nonfinite)

  def run(self, num_steps: int, p_state):
    """Runs ``num_steps`` steps in one dispatch; returns the new state and [D, k] logs."""
    if self.resident:
      return self.steps.run(num_steps, p_state, *self._inputs)
    # [D, b, ...] per step → [D, k, b, ...]: the scan runs over axis 1 on each device.
    host = [next(self._stream) for _ in range(num_steps)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *host)
    return self.steps.run(num_steps, p_state, stacked)

  def close(self):
    if not self.resident and hasattr(self._stream, "close"):
      self._stream.close()


def input_workers(config: ml_collections.ConfigDict, split: data.Examples) -> int:
  """``dataset.num_workers``, with -1 resolved: a worker per core (up to 8) for a lazily read
  split, none for one already in memory (threads suffice to resize it)."""
  workers = int(config.dataset.num_workers)
  if workers >= 0:
    return workers
  return 0 if isinstance(split, data.InMemoryExamples) else min(os.cpu_count() or 1, 8)


def steps_per_dispatch(config: ml_collections.ConfigDict) -> int:
  """``config.steps_per_dispatch``, with 0 resolved: 1 on CPU, 10 on accelerators."""
  k = int(config.steps_per_dispatch)
  return k if k > 0 else (1 if jax.default_backend() == "cpu" else 10)


def next_stop(step: int, total_steps: int, config: ml_collections.ConfigDict) -> int:
  """The first step after ``step`` at which the host must act: an eval, a checkpoint or the end.

  A dispatch never runs past it, so evaluations and checkpoints happen at exactly their steps.
  """
  stops = [total_steps, step + steps_per_dispatch(config)]
  for every in (config.eval_every, config.checkpoint_every):
    stops.append((step // every + 1) * every)
  return min(stops)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training and returns the final eval metrics.

  Raises ConfigError before anything is written for a bad config, a workdir that holds a
  different run or is in use; NonFiniteError at the first non-finite step (policy 'stop');
  Preempted after saving a checkpoint when SIGTERM or SIGINT arrived.
  """
  clock = timing.PhaseClock()
  num_devices = jax.local_device_count()
  # Multi-host: every process trains its devices' share; only process 0 writes files (orbax
  # coordinates the checkpoints of all processes itself).
  primary = jax.process_index() == 0
  stream = check_config(config, num_devices)
  workdir_lib.check_same_run(workdir, config)
  data_dir = config.dataset.data_dir or None
  with clock("dataset"):
    files = data.file_options(config.dataset)  # path and build options of coco_raw / image_text_folder
    train_split = data.load_examples(config.dataset.name, config.dataset.train_split, data_dir, **files)
    eval_split = data.load_examples(config.dataset.name, config.dataset.eval_split, data_dir, **files)
    tokenizer = load_tokenizer(config, train_split, workdir)
    stream = dataclasses.replace(stream, tokenizer=tokenizer)
  if config.batch_size > len(train_split):
    raise ConfigError(
      f"batch_size={config.batch_size} exceeds the {len(train_split)} examples of "
      f"{config.dataset.name}:{config.dataset.train_split}"
    )
  per_epoch, total_steps, warmup_steps = plan_steps(config, len(train_split))
  lr = learning_rate_schedule(config.optimizer, total_steps, warmup_steps)
  tx, spec = make_optimizer(config, total_steps, warmup_steps, schedule=lr)
  model = models.create_model(config.model, spec.nu_init)
  image_shape = (config.model.image_size, config.model.image_size, 3)
  with clock("setup"):
    state = init_state(model, tx, jax.random.PRNGKey(config.seed), image_shape, config.model.context_length)

  # Everything above validates the config; only now does the run touch its workdir.
  lock = workdir_lib.WorkdirLock(workdir) if primary else contextlib.nullcontext()
  with lock, preemption.StopRequests() as stop:
    ckpt = checkpoint.Checkpointer(workdir, every=config.checkpoint_every, keep=config.keep_checkpoints)
    try:
      with clock("checkpoint"):
        restored = ckpt.restore(state)
    except ConfigError:
      ckpt.close()
      raise
    if primary:
      run_io.write_json(os.path.join(workdir, "config.json"), config.to_dict())
      run_io.write_text(os.path.join(workdir, "tokenizer.json"), tokenizer.to_json())
    state = restored if restored is not None else state
    start_step = int(state.step)
    log = (
      run_io.MetricsLog(os.path.join(workdir, "metrics.jsonl"), resume_step=start_step) if primary else run_io.NullLog()
    )
    event_log = events.EventLog(workdir, resume_step=start_step, enabled=primary and bool(config.tensorboard))
    with clock("dataset"):
      evaluator = Evaluator(model, config, train_split, eval_split, num_devices, tokenizer)
      batches = _Batches(config, train_split, stream, model, tx, spec, start_step, total_steps)

    p_state = flax.jax_utils.replicate(state)
    final_eval, embeddings = None, None
    bar = tqdm(
      total=total_steps,
      initial=start_step,
      desc=f"train {config.method}",
      unit="step",
      disable=not (config.progress_bar and primary),
      dynamic_ncols=True,
    )
    step = start_step
    try:
      while step < total_steps:
        stop_at = next_stop(step, total_steps, config)
        with clock("train"):
          p_state, logs = batches.run(stop_at - step, p_state)
          codes = np.asarray(jax.device_get(logs["nonfinite"]))[0]  # [k]; the sync a step needs anyway
          bad = np.flatnonzero(codes) if config.nonfinite == "stop" else []
          last_good = step + int(bad[0]) if len(bad) else stop_at
          logged = [s for s in range(step + 1, last_good + 1) if s % config.log_every == 0 or s == total_steps]
          if logged:
            host = jax.device_get(logs)
            for s in logged:
              host_logs = {k: float(v[0, s - step - 1]) for k, v in host.items()}
              host_logs["learning_rate"] = float(lr(s - 1))
              host_logs["epoch"] = s / per_epoch
              log.write(s, "train", host_logs)
              event_log.scalars(s, "train", host_logs)
            bar.set_postfix(
              loss=f"{host_logs['loss']:.3f}", tau=f"{host_logs['tau']:.4f}", gap=f"{host_logs['gap']:.3f}"
            )
        if len(bad):
          raise NonFiniteError(
            last_good + 1, train_step_lib.describe_nonfinite(codes[bad[0]]), ckpt.latest_step(), ckpt.directory
          )
        bar.update(stop_at - step)
        step = stop_at
        if step % config.eval_every == 0 or step == total_steps:
          with clock("eval"):
            final_eval, embeddings = _evaluate(evaluator, p_state, spec)
          log.write(step, "eval", final_eval)
          event_log.scalars(step, "eval", final_eval)
        if ckpt.is_due(step) or step == total_steps or stop.requested:  # fetch the state only to save it
          with clock("checkpoint"):
            ckpt.save(step, jax.device_get(flax.jax_utils.unreplicate(p_state)))
        if stop.requested and step < total_steps:
          raise Preempted(stop.requested, f"at step {step} of {total_steps}, checkpoint saved in {ckpt.directory}")
    except BaseException:
      event_log.close()  # a failed or stopped run writes no more events
      raise
    finally:
      batches.close()
      bar.close()
      log.close()
      with clock("checkpoint"):
        ckpt.close()

    if final_eval is None:  # the run had already finished: report the restored final state
      with clock("eval"):
        final_eval, embeddings = _evaluate(evaluator, p_state, spec)
    clock.move("train", "compile", batches.steps.compile_seconds)
    with clock("outputs"):
      if primary:
        write_outputs(
          workdir,
          config,
          final_eval,
          embeddings,
          total_steps=total_steps,
          num_devices=jax.device_count(),
          clock=clock,
          resumed_from=start_step,
        )
        event_log.image("embeddings_pca", total_steps, os.path.join(workdir, "embeddings_pca.png"))
      event_log.close()
  return final_eval


def _evaluate(evaluator: Evaluator, p_state: Any, spec) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Every eval metric of the replicated state (its variables stay on the devices)."""
  nu = float(p_state.params["temperature"]["nu"][0])
  beta = float(spec.reparam.beta(nu))
  out, embeddings = evaluator(_variables(p_state), beta)
  out.update(beta=beta, tau=1.0 / beta, nu=nu, nonfinite_skips=int(p_state.nonfinite_skips[0]))
  return out, embeddings


def write_outputs(
  workdir: str,
  config: ml_collections.ConfigDict,
  final_eval: dict[str, float],
  embeddings: dict[str, np.ndarray],
  *,
  total_steps: int,
  num_devices: int,
  clock: timing.PhaseClock,
  resumed_from: int,
) -> None:
  """report.md and the figures, from metrics.jsonl and the final embeddings."""
  records = run_io.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  training_plots.plot_curves(records, os.path.join(workdir, "curves.png"))
  paired_images = embeddings["image"][embeddings["text_to_image"]]
  training_plots.plot_embedding_pca(
    paired_images,
    embeddings["text"],
    os.path.join(workdir, "embeddings_pca.png"),
    title=f"{config.method}: Δ = {final_eval['gap']:.3f}, τ = {final_eval['tau']:.4f}",
    seed=config.seed,
  )
  run_io.write_text(
    os.path.join(workdir, "report.md"),
    render_report(
      config, final_eval, total_steps=total_steps, num_devices=num_devices, clock=clock, resumed_from=resumed_from
    ),
  )


REPORT_ROWS = (
  ("modality gap Δ (all pairs)", "gap"),
  ("modality gap Δ (512 random pairs)", "gap_512"),
  ("temperature τ", "tau"),
  ("eval loss", "loss"),
  ("uniformity −W2 (union) ↑", "uniformity_w2"),
  ("uniformity −W2 image / text", ("uniformity_w2_image", "uniformity_w2_text")),
  ("uniformity Wang–Isola (union) ↓", "uniformity_wi"),
  ("alignment ↓", "alignment"),
  ("text retrieval i2t R@1 / R@5 / R@10", ("i2t_r1", "i2t_r5", "i2t_r10")),
  ("image retrieval t2i R@1 / R@5 / R@10", ("t2i_r1", "t2i_r5", "t2i_r10")),
  ("zero-shot top-1", "zeroshot_top1"),
  ("linear-probe top-1", "linear_probe_top1"),
)


PHASE_LABELS = {
  "dataset": "dataset build and load, tokenizer, device-resident split",
  "setup": "model initialisation",
  "compile": "train-step compilation",
  "train": "train steps",
  "eval": "evaluation (its compilation included)",
  "checkpoint": "checkpoints (restore, save)",
  "outputs": "figures and report",
  "other": "outside the phases above (this report included; imports excluded)",
}


def render_report(
  config: ml_collections.ConfigDict,
  final_eval: dict[str, float],
  *,
  total_steps: int,
  num_devices: int,
  clock: timing.PhaseClock,
  resumed_from: int,
) -> str:
  """A short Markdown report of the final evaluation."""

  def fmt(key):
    keys = key if isinstance(key, tuple) else (key,)
    return " / ".join("n/a" if not np.isfinite(final_eval.get(k, np.nan)) else f"{final_eval[k]:.4f}" for k in keys)

  t = config.temperature
  lines = [
    f"# modgap_jax run: {config.method}",
    "",
    f"- dataset: `{config.dataset.name}` (train `{config.dataset.train_split}`, eval `{config.dataset.eval_split}`)",
    f"- temperature: mode `{t.mode}`, reparameterisation `{t.reparam}`, τ₀ {t.tau_init}, "
    f"β cap {t.beta_cap or 'none'}, ν lr × {t.lr_multiplier}",
    f"- swap: `{config.swap.method}` with p = {config.swap.p}",
    f"- {total_steps} steps of global batch {config.batch_size} on {num_devices} device(s); "
    f"{steps_per_dispatch(config)} per dispatch" + (f", resumed from step {resumed_from}" if resumed_from else ""),
    "",
    "| metric | final |",
    "|---|---|",
  ]
  lines += [f"| {label} | {fmt(key)} |" for label, key in REPORT_ROWS]
  rows = clock.rows()
  total = sum(seconds for _, seconds in rows)
  lines += ["", f"Wall time of this invocation: {total:.1f} s", "", "| phase | seconds | share |", "|---|---|---|"]
  lines += [
    f"| {PHASE_LABELS.get(phase, phase)} | {seconds:.1f} | {seconds / max(total, 1e-9):.0%} |"
    for phase, seconds in rows
  ]
  lines += [
    "",
    "Figures: `curves.png` (loss, τ, Δ over steps), `embeddings_pca.png` (paper Fig. 1 style).",
    "All numbers per step: `metrics.jsonl`.",
    "",
  ]
  return "\n".join(lines)
