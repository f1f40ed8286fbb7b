"""Embeds whole splits with pmapped encoders and computes every MATH.md §2 metric of a model.

:class:`Evaluator` serves the trainer (every ``eval_every`` steps, on the replicated state)
and the analysis of a run directory (on restored variables): the same embeddings, in index
order, either way. The metrics themselves are :mod:`modgap_jax.evaluation`'s.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import ml_collections
import numpy as np

from modgap_jax import data, evaluation, models, numerics, temperature
from modgap_jax import train_step as train_step_lib
from modgap_jax.data import scenes


def round_up(n: int, multiple: int) -> int:
  """The least multiple of ``multiple`` that is ≥ n."""
  return numerics.ceil_div(n, multiple) * multiple


class Evaluator:
  """Embeds whole splits with pmapped encoders and computes every MATH.md §2 metric.

  Made before a run writes anything: the zero-shot prompts (and their one-line refusals) come
  from the data here.
  """

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
    self.batch_size = round_up(config.eval.batch_size, num_devices)
    self._encode_image = jax.pmap(functools.partial(model.apply, train=False, method=models.CLIP.encode_image))
    self._encode_text = jax.pmap(functools.partial(model.apply, method=models.CLIP.encode_text))
    label = config.dataset.zero_shot_label
    self.label_key = label if label and label in eval_split.labels() else None
    self.class_tokens = None
    if self.label_key and config.eval.zero_shot:
      if config.dataset.name == scenes.NAME:  # generated: the world names its classes
        world = scenes.world_from_config(config.dataset, config.model.image_size)
        classnames, templates = scenes.zero_shot_classes(world, self.label_key)
      else:
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
    """[n, d] embeddings of token rows [n, L] (padded to the devices and cut back)."""
    n = len(tokens)
    padded = np.zeros((round_up(n, self.num_devices), tokens.shape[1]), tokens.dtype)
    padded[:n] = tokens
    emb = np.asarray(self._encode_text(variables, padded.reshape(self.num_devices, -1, tokens.shape[1])))
    return emb.reshape(-1, emb.shape[-1])[:n]

  def class_embeddings(self, variables: Any) -> np.ndarray | None:
    """[C, T, d] embeddings of the zero-shot prompts, or None without zero-shot."""
    if self.label_key is None or self.class_tokens is None:
      return None
    return self.embed_tokens(variables, self.class_tokens).reshape(*self.class_shape, -1)

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
    probe_train = None
    if self.label_key and self.config.eval.linear_probe:
      train_emb, train_labels = self.embed_images(variables, self.train_split)
      probe_train = (train_emb, train_labels[self.label_key])
    out.update(
      evaluation.classification_metrics(
        image_emb,
        labels.get(self.label_key),
        self.class_embeddings(variables),
        probe_train,
        probe_l2=self.config.eval.probe_l2,
        probe_steps=self.config.eval.probe_steps,
      )
    )
    return out, {"image": image_emb, "text": text_emb, "text_to_image": text_to_image}

  def evaluate_state(
    self, p_state: train_step_lib.TrainState, reparam: temperature.Reparam
  ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every eval metric of a replicated train state (its variables stay on the devices), with
    its β = β(ν), τ = 1/β, ν and count of skipped non-finite updates."""
    nu = float(p_state.params["temperature"]["nu"][0])
    beta = float(reparam.beta(nu))
    out, embeddings = self(train_step_lib.model_variables(p_state.params, p_state.batch_stats), beta)
    out.update(beta=beta, tau=1.0 / beta, nu=nu, nonfinite_skips=int(p_state.nonfinite_skips[0]))
    return out, embeddings
