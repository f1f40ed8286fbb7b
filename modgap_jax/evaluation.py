"""Evaluation of a trained CLIP on a whole split: every MATH.md §2 metric from embeddings.

The pairs of a split are all (image, caption) pairs: caption j is paired with image
``text_to_image[j]``. So with several captions per image an image counts once per caption in
the gap and alignment, and once in the image-only uniformity.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from modgap_jax import losses, metrics

EVAL_KEYS = (
  "loss",
  "gap",
  "gap_512",
  "uniformity_w2",
  "uniformity_wi",
  "alignment",
  "i2t_r1",
  "i2t_r5",
  "i2t_r10",
  "t2i_r1",
  "t2i_r5",
  "t2i_r10",
  "zeroshot_top1",
  "linear_probe_top1",
)


def one_to_one_pairs(text_to_image: np.ndarray, num_images: int) -> tuple[np.ndarray, np.ndarray]:
  """(image index, caption index) of each image's first caption, for the images that have one."""
  first = np.full(num_images, -1, np.int64)
  # Assigning in reverse caption order leaves each image's lowest caption index.
  first[text_to_image[::-1]] = np.arange(len(text_to_image))[::-1]
  images = np.flatnonzero(first >= 0)
  return images, first[images]


def first_caption_of_each_image(text_to_image: np.ndarray, num_images: int) -> np.ndarray:
  """Index of the first caption of every image (all images must have one)."""
  images, first = one_to_one_pairs(np.asarray(text_to_image), num_images)
  if len(images) < num_images:
    raise ValueError(f"{num_images - len(images)} images have no caption")
  return first


def eval_loss(
  image_emb: np.ndarray, text_emb: np.ndarray, text_to_image: np.ndarray, beta: float, batch_size: int
) -> float:
  """Mean CLIP loss over consecutive batches of (image, first caption) pairs.

  Batches of the training size keep the number the same kind of quantity as the training loss
  (L grows like log n with the batch), rather than one n×n loss over the whole split.
  """
  first = first_caption_of_each_image(text_to_image, image_emb.shape[0])
  paired_text = text_emb[first]
  n = image_emb.shape[0]
  size = max(2, min(int(batch_size), n))
  values, weights = [], []
  for start in range(0, n - 1, size):
    stop = min(start + size, n)
    if stop - start < 2:
      break
    values.append(
      float(
        losses.clip_loss(jnp.asarray(image_emb[start:stop]), jnp.asarray(paired_text[start:stop]), jnp.float32(beta))
      )
    )
    weights.append(stop - start)
  return float(np.average(values, weights=weights))


def embedding_metrics(
  image_emb: np.ndarray,
  text_emb: np.ndarray,
  text_to_image: np.ndarray,
  *,
  beta: float,
  loss_batch_size: int | None,
  gap_pairs: int = 512,
  seed: int = 0,
  chunk_size: int = 1024,
) -> dict[str, float | None]:
  """Loss, gaps, uniformities, alignment and recalls of one split (MATH.md §2).

  Args:
    image_emb: [N_img, d] unit rows.
    text_emb: [N_txt, d] unit rows.
    text_to_image: int [N_txt], the image of each caption.
    beta: the inverse temperature for the loss.
    loss_batch_size: batch size of the eval loss (the training batch size); None leaves the
      loss out (for a caller with a loss of its own).
    gap_pairs: the size of the random pair sample of ``gap_512`` (MATH.md §2: 512).
    seed: seeds the pair sample, so every evaluation of a run uses the same pairs.
    chunk_size: query rows per block of the Wang–Isola uniformity and the recalls.

  Returns:
    Python floats. ``uniformity_w2``/``uniformity_wi`` are the union of both modalities;
    ``_image`` and ``_text`` suffixes give each alone. A Wang–Isola uniformity of a set of
    fewer than 2 rows is None (it averages over distinct pairs).
  """
  text_to_image = np.asarray(text_to_image)
  paired_images = image_emb[text_to_image]
  # Gap and alignment over caption pairs; uniformity over each set of distinct embeddings.
  out = {
    "gap": float(metrics.modality_gap(paired_images, text_emb)),
    "alignment": float(metrics.alignment(paired_images, text_emb)),
  }
  sample = np.random.default_rng(seed).choice(len(text_emb), size=min(gap_pairs, len(text_emb)), replace=False)
  out["gap_512"] = float(metrics.modality_gap(paired_images[sample], text_emb[sample]))
  union = np.concatenate([image_emb, text_emb], axis=0)
  for name, emb in (("image", image_emb), ("text", text_emb), ("union", union)):
    out[f"uniformity_w2_{name}"] = float(metrics.uniformity_w2(emb))
    out[f"uniformity_wi_{name}"] = (
      float(metrics.uniformity_wang_isola(emb, chunk_size=chunk_size)) if len(emb) >= 2 else None
    )
  out["uniformity_w2"] = out["uniformity_w2_union"]
  out["uniformity_wi"] = out["uniformity_wi_union"]
  out.update(
    metrics.retrieval_recall(image_emb, text_emb, ks=(1, 5, 10), text_to_image=text_to_image, chunk_size=chunk_size)
  )
  if loss_batch_size is not None:
    out["loss"] = eval_loss(image_emb, text_emb, text_to_image, beta, loss_batch_size)
  return out


def classification_metrics(
  image_emb: np.ndarray,
  labels: np.ndarray | None,
  class_text_emb: np.ndarray | None,
  probe_train: tuple[np.ndarray, np.ndarray] | None,
  *,
  probe_l2: float,
  probe_steps: int,
) -> dict[str, float]:
  """Zero-shot top-1 from class prompts, and linear-probe top-1 trained on ``probe_train``.

  Each is NaN when its inputs are absent (a dataset without labels, or the metric turned off).
  """
  out = {"zeroshot_top1": float("nan"), "linear_probe_top1": float("nan")}
  if labels is None:
    return out
  if class_text_emb is not None:
    out["zeroshot_top1"] = float(metrics.zero_shot_accuracy(image_emb, labels, class_text_emb))
  if probe_train is not None:
    train_feats, train_labels = probe_train
    out["linear_probe_top1"] = metrics.linear_probe_accuracy(
      train_feats, train_labels, image_emb, labels, l2=probe_l2, steps=probe_steps
    )
  return out
