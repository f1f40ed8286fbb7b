"""``train_and_evaluate(config, workdir)``: the main job (DESIGN.md "How data flows").

Trains CLIP from scratch with the configured temperature or swap method, evaluates every
SPEC §2 metric on the held-out split, checkpoints with orbax, and writes ``config.json``,
``metrics.jsonl``, ``report.md`` and figures into ``workdir``. A run restarted with the same
workdir resumes from its latest checkpoint: same step, same data order, same randomness.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import flax.jax_utils
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from modgap_jax import checkpoint, data, evaluation, models, run_io, swap, temperature, timing
from modgap_jax import train_step as train_step_lib
from modgap_jax.data import resident
from modgap_jax.errors import ConfigError, check_choice, check_range
from modgap_jax.plots import training as training_plots
from modgap_jax.train_step import TrainState, init_state, learning_rate_schedule, make_optimizer

# A train split up to this size (images + tokens, per device) is kept on the devices.
RESIDENT_LIMIT_BYTES = 2 << 30
ON_DEVICE_CHOICES = ("auto", "yes", "no")

TRAIN_LOG_KEYS = ("loss", "loss_i2t", "loss_t2i", "positive_logit", "negative_logit", "nu", "beta", "tau",
                  "grad_norm", "gap")


class Evaluator:
  """Embeds whole splits with pmapped encoders and computes every SPEC §2 metric."""

  def __init__(self, model: models.CLIP, config: ml_collections.ConfigDict, train_split: data.Examples,
               eval_split: data.Examples, num_devices: int, tokenizer: data.Tokenizer):
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
      classnames, templates = data.zero_shot_classes(config.dataset.name, self.label_key)
      prompts = [template.format(c) for c in classnames for template in templates]
      self.class_tokens = tokenizer.encode(prompts, self.context_length)
      self.class_shape = (len(classnames), len(templates))

  def embed_images(self, variables: Any, split: data.Examples) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """[N, d] image embeddings in index order, and the split's labels."""
    chunks = []
    batches = data.eval_image_batches(split, batch_size=self.batch_size, num_devices=self.num_devices,
                                      image_size=self.image_size, mean=self.config.dataset.mean,
                                      std=self.config.dataset.std)
    for batch in data.prefetch(batches):
      emb = np.asarray(self._encode_image(variables, batch["image"]))
      chunks.append(emb.reshape(-1, emb.shape[-1])[batch["mask"].reshape(-1)])
    return np.concatenate(chunks), split.labels()

  def embed_texts(self, variables: Any, split: data.Examples) -> tuple[np.ndarray, np.ndarray]:
    """[M, d] caption embeddings and each caption's image index."""
    chunks, image_index = [], []
    batches = data.eval_text_batches(split, batch_size=self.batch_size, num_devices=self.num_devices,
                                     context_length=self.context_length, tokenizer=self.tokenizer)
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
    out = evaluation.embedding_metrics(image_emb, text_emb, text_to_image, beta=beta,
                                       loss_batch_size=self.config.batch_size,
                                       gap_pairs=self.config.eval.gap_pairs, seed=self.config.seed)
    class_emb = probe_train = None
    if self.label_key and self.class_tokens is not None:
      class_emb = self.embed_tokens(variables, self.class_tokens).reshape(*self.class_shape, -1)
    if self.label_key and self.config.eval.linear_probe:
      train_emb, train_labels = self.embed_images(variables, self.train_split)
      probe_train = (train_emb, train_labels[self.label_key])
    out.update(evaluation.classification_metrics(
        image_emb, labels.get(self.label_key), class_emb, probe_train, probe_l2=self.config.eval.probe_l2,
        probe_steps=self.config.eval.probe_steps))
    return out, {"image": image_emb, "text": text_emb, "text_to_image": text_to_image}


def _round_up(n: int, multiple: int) -> int:
  return -(-int(n) // multiple) * multiple


def _variables(state: TrainState) -> dict[str, Any]:
  variables = {"params": state.params}
  if jax.tree_util.tree_leaves(state.batch_stats):
    variables["batch_stats"] = state.batch_stats
  return variables


def plan_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> tuple[int, int, int]:
  """(steps per epoch, total steps, warm-up steps) from the epoch-based config."""
  per_epoch = data.steps_per_epoch(num_train_examples, config.batch_size)
  if config.num_steps > 0:
    total = int(config.num_steps)
  else:
    check_range("num_epochs", float(config.num_epochs), 0.0, None, low_inclusive=False)
    total = max(1, round(config.num_epochs * per_epoch))
  warmup = round(float(config.optimizer.warmup_epochs) * per_epoch)
  return per_epoch, total, warmup


def _check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Validates every field that needs no data, so a bad config fails before anything is built."""
  check_choice("dataset.name", config.dataset.name, data.DATASETS)
  check_choice("dataset.tokenizer", config.dataset.tokenizer, data.TOKENIZER_KINDS)
  check_choice("swap.method", config.swap.method, swap.SWAP_METHODS)
  check_range("swap.p", float(config.swap.p), 0.0, 1.0)
  spec = temperature.spec_from_config(config.temperature, total_steps=1)
  models.create_model(config.model, spec.nu_init)
  check_choice("dataset.on_device", config.dataset.on_device, ON_DEVICE_CHOICES)
  resident.Augment(config.dataset.augment_min_scale)
  check_range("dataset.mismatch_fraction", float(config.dataset.mismatch_fraction), 0.0, 1.0)
  if config.dataset.on_device == "no":
    _check_stream_options(config)
  if int(config.steps_per_dispatch) < 0:
    raise ConfigError(f"steps_per_dispatch={config.steps_per_dispatch!r} must be >= 0 (0 = auto)")
  for field in ("batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    if int(config[field]) < 1:
      raise ConfigError(f"{field}={config[field]!r} must be a positive integer")
  if config.batch_size % num_devices:
    raise ConfigError(f"batch_size={config.batch_size} must be divisible by the {num_devices} local devices")


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
    raise ConfigError(f"model.vocab_size={config.model.vocab_size} is smaller than the {config.dataset.tokenizer} "
                      f"tokenizer's {tokenizer.vocab_size} ids; set it to at least {tokenizer.vocab_size}")
  return tokenizer


def _use_resident(config: ml_collections.ConfigDict, split: data.Examples, num_devices: int) -> bool:
  """Whether the train split goes on the devices (``dataset.on_device``: auto, yes or no)."""
  mode = config.dataset.on_device
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
    raise ConfigError("dataset.mismatch_fraction and dataset.augment_min_scale need the on-device split "
                      "(dataset.on_device='auto' or 'yes' on a dataset that fits)")


class _Batches:
  """Where a run's training batches come from: the resident split, or a host stream."""

  def __init__(self, config, train_split, tokenizer, model, tx, spec, num_devices, start_step, total_steps):
    self.resident = _use_resident(config, train_split, num_devices)
    if self.resident:
      split = resident.make_resident_split(
          train_split, tokenizer, image_size=config.model.image_size, context_length=config.model.context_length,
          seed=config.seed, mismatch_fraction=config.dataset.mismatch_fraction)
      sampling = resident.Sampling(len(train_split), config.batch_size, tuple(config.dataset.mean),
                                        tuple(config.dataset.std),
                                        resident.Augment(config.dataset.augment_min_scale))
      self._inputs = flax.jax_utils.replicate((split, resident.data_key(config.seed)))
      self.steps = train_step_lib.make_resident_multistep(model, tx, spec.reparam, config.swap, sampling)
    else:
      _check_stream_options(config)
      batches = data.train_batches(train_split, global_batch_size=config.batch_size, num_devices=num_devices,
                                   image_size=config.model.image_size, context_length=config.model.context_length,
                                   seed=config.seed, start_step=start_step, mean=config.dataset.mean,
                                   std=config.dataset.std, tokenizer=tokenizer)
      self._stream = data.prefetch(batches, buffer_size=2 * steps_per_dispatch(config))
      self.steps = train_step_lib.make_streamed_multistep(model, tx, spec.reparam, config.swap)

  def run(self, num_steps: int, p_state):
    """Runs ``num_steps`` steps in one dispatch; returns the new state and [D, k] logs."""
    if self.resident:
      return self.steps.run(num_steps, p_state, *self._inputs)
    # [D, b, ...] per step → [D, k, b, ...]: the scan runs over axis 1 on each device.
    host = [next(self._stream) for _ in range(num_steps)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *host)
    return self.steps.run(num_steps, p_state, stacked)

  def close(self):
    if not self.resident:
      self._stream.close()


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
  """Runs (or resumes) training and returns the final eval metrics."""
  clock = timing.PhaseClock()
  num_devices = jax.local_device_count()
  _check_config(config, num_devices)
  data_dir = config.dataset.data_dir or None
  with clock("dataset"):
    train_split = data.load_examples(config.dataset.name, config.dataset.train_split, data_dir)
    eval_split = data.load_examples(config.dataset.name, config.dataset.eval_split, data_dir)
    tokenizer = load_tokenizer(config, train_split, workdir)
  per_epoch, total_steps, warmup_steps = plan_steps(config, len(train_split))
  tx, spec = make_optimizer(config, total_steps, warmup_steps)
  model = models.create_model(config.model, spec.nu_init)
  image_shape = (config.model.image_size, config.model.image_size, 3)
  with clock("setup"):
    state = init_state(model, tx, jax.random.PRNGKey(config.seed), image_shape, config.model.context_length)

  # Everything above validates the config; only now does the run touch its workdir.
  os.makedirs(workdir, exist_ok=True)
  run_io.write_json(os.path.join(workdir, "config.json"), config.to_dict())
  run_io.write_text(os.path.join(workdir, "tokenizer.json"), tokenizer.to_json())
  ckpt = checkpoint.Checkpointer(workdir, every=config.checkpoint_every, keep=config.keep_checkpoints)
  with clock("checkpoint"):
    restored = ckpt.restore(state)
  state = restored if restored is not None else state
  start_step = int(state.step)
  log = run_io.MetricsLog(os.path.join(workdir, "metrics.jsonl"), resume_step=start_step)
  with clock("dataset"):
    evaluator = Evaluator(model, config, train_split, eval_split, num_devices, tokenizer)
    batches = _Batches(config, train_split, tokenizer, model, tx, spec, num_devices, start_step, total_steps)
  lr = learning_rate_schedule(config.optimizer, total_steps, warmup_steps)

  p_state = flax.jax_utils.replicate(state)
  final_eval, embeddings = None, None
  bar = tqdm(total=total_steps, initial=start_step, desc=f"train {config.method}", unit="step",
             disable=not config.progress_bar, dynamic_ncols=True)
  step = start_step
  try:
    while step < total_steps:
      stop = next_stop(step, total_steps, config)
      with clock("train"):
        p_state, logs = batches.run(stop - step, p_state)
        logged = [s for s in range(step + 1, stop + 1) if s % config.log_every == 0 or s == total_steps]
        if logged:
          host = jax.device_get(logs)
          for s in logged:
            host_logs = {k: float(v[0, s - step - 1]) for k, v in host.items()}
            host_logs["learning_rate"] = float(lr(s - 1))
            host_logs["epoch"] = s / per_epoch
            log.write(s, "train", host_logs)
          bar.set_postfix(loss=f"{host_logs['loss']:.3f}", tau=f"{host_logs['tau']:.4f}",
                          gap=f"{host_logs['gap']:.3f}")
        else:
          jax.block_until_ready(p_state.step)
      bar.update(stop - step)
      step = stop
      if step % config.eval_every == 0 or step == total_steps:
        with clock("eval"):
          final_eval, embeddings = _evaluate(evaluator, p_state, spec)
        log.write(step, "eval", final_eval)
      if ckpt.is_due(step) or step == total_steps:  # fetch the state only when it is saved
        with clock("checkpoint"):
          ckpt.save(step, jax.device_get(flax.jax_utils.unreplicate(p_state)))
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
    write_outputs(workdir, config, final_eval, embeddings, total_steps=total_steps, num_devices=num_devices,
                  clock=clock, resumed_from=start_step)
  return final_eval


def _evaluate(evaluator: Evaluator, p_state: Any, spec) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  state = flax.jax_utils.unreplicate(p_state)
  nu = state.params["temperature"]["nu"]
  beta = float(spec.reparam.beta(nu))
  out, embeddings = evaluator(flax.jax_utils.replicate(_variables(state)), beta)
  out.update(beta=beta, tau=1.0 / beta, nu=float(nu))
  return out, embeddings


def write_outputs(workdir: str, config: ml_collections.ConfigDict, final_eval: dict[str, float],
                  embeddings: dict[str, np.ndarray], *, total_steps: int, num_devices: int,
                  clock: timing.PhaseClock, resumed_from: int) -> None:
  """report.md and the figures, from metrics.jsonl and the final embeddings."""
  records = run_io.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  training_plots.plot_curves(records, os.path.join(workdir, "curves.png"))
  paired_images = embeddings["image"][embeddings["text_to_image"]]
  training_plots.plot_embedding_pca(
      paired_images, embeddings["text"], os.path.join(workdir, "embeddings_pca.png"),
      title=f"{config.method}: Δ = {final_eval['gap']:.3f}, τ = {final_eval['tau']:.4f}", seed=config.seed)
  run_io.write_text(os.path.join(workdir, "report.md"),
                    render_report(config, final_eval, total_steps=total_steps, num_devices=num_devices,
                                  clock=clock, resumed_from=resumed_from))


REPORT_ROWS = (
    ("modality gap Δ (all pairs)", "gap"), ("modality gap Δ (512 random pairs)", "gap_512"),
    ("temperature τ", "tau"), ("eval loss", "loss"),
    ("uniformity −W2 (union) ↑", "uniformity_w2"), ("uniformity −W2 image / text", ("uniformity_w2_image",
                                                                                  "uniformity_w2_text")),
    ("uniformity Wang–Isola (union) ↓", "uniformity_wi"), ("alignment ↓", "alignment"),
    ("text retrieval i2t R@1 / R@5 / R@10", ("i2t_r1", "i2t_r5", "i2t_r10")),
    ("image retrieval t2i R@1 / R@5 / R@10", ("t2i_r1", "t2i_r5", "t2i_r10")),
    ("zero-shot top-1", "zeroshot_top1"), ("linear-probe top-1", "linear_probe_top1"),
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


def render_report(config: ml_collections.ConfigDict, final_eval: dict[str, float], *, total_steps: int,
                  num_devices: int, clock: timing.PhaseClock, resumed_from: int) -> str:
  """A short Markdown report of the final evaluation."""

  def fmt(key):
    keys = key if isinstance(key, tuple) else (key,)
    return " / ".join("n/a" if not np.isfinite(final_eval.get(k, np.nan)) else f"{final_eval[k]:.4f}" for k in keys)

  t = config.temperature
  lines = [
      f"# modgap_jax run: {config.method}", "",
      f"- dataset: `{config.dataset.name}` (train `{config.dataset.train_split}`, eval `{config.dataset.eval_split}`)",
      f"- temperature: mode `{t.mode}`, reparameterisation `{t.reparam}`, τ₀ {t.tau_init}, "
      f"β cap {t.beta_cap or 'none'}, ν lr × {t.lr_multiplier}",
      f"- swap: `{config.swap.method}` with p = {config.swap.p}",
      f"- {total_steps} steps of global batch {config.batch_size} on {num_devices} device(s); "
      f"{steps_per_dispatch(config)} per dispatch" + (f", resumed from step {resumed_from}" if resumed_from else ""),
      "", "| metric | final |", "|---|---|",
  ]
  lines += [f"| {label} | {fmt(key)} |" for label, key in REPORT_ROWS]
  rows = clock.rows()
  total = sum(seconds for _, seconds in rows)
  lines += ["", f"Wall time of this invocation: {total:.1f} s", "", "| phase | seconds | share |", "|---|---|---|"]
  lines += [f"| {PHASE_LABELS.get(phase, phase)} | {seconds:.1f} | {seconds / max(total, 1e-9):.0%} |"
            for phase, seconds in rows]
  lines += ["", "Figures: `curves.png` (loss, τ, Δ over steps), `embeddings_pca.png` (paper Fig. 1 style).",
            "All numbers per step: `metrics.jsonl`.", ""]
  return "\n".join(lines)
