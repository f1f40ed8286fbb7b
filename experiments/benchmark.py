r"""Speed and memory benchmarks; every ratio is measured within one run.

  python -m experiments.benchmark --model=rn50 --batch_size=256     # on a GPU
  python -m experiments.benchmark --model=tiny --batch_size=64      # on a CPU

1. The pmapped train step on synthetic batches, float32 vs bfloat16 compute (float32 params):
   median step time, images/s, and XLA's compiled memory (arguments + temporaries) per device.
2. ``metrics.retrieval_recall`` at N × N (default 50 000 × 50 000, d = 512): time, and the
   bytes a dense similarity matrix would need, against the chunked peak.

Results of a run on real hardware are recorded in README.md ("Benchmarks").
"""

from __future__ import annotations

import statistics
import time

import flax.jax_utils
import jax
import numpy as np
from absl import app, flags

from configs import default
from modgap_jax import methods, metrics, models, train_step

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "tiny", ["tiny", "rn50"], "Model shape: configs/default.py's, or CLIP RN50 at 224 px.")
flags.DEFINE_integer("batch_size", 64, "Global batch size (split over the local devices).")
flags.DEFINE_integer("steps", 10, "Timed steps per dtype (after 2 warm-up steps).")
flags.DEFINE_integer("recall_n", 50_000, "Images and captions for the recall benchmark (0 skips it).")
flags.DEFINE_integer("recall_dim", 512, "Embedding width for the recall benchmark.")


def model_config(name: str):
  config = default.get_config()
  if name == "rn50":
    config.model = models.rn50_config()
    config.model.resnet.axis_name = "batch"
  return config


def bench_train_step(config, dtype: str, batch_size: int, steps: int) -> dict[str, float]:
  config.model.dtype = dtype
  devices = jax.local_device_count()
  tx, spec = train_step.make_optimizer(config, total_steps=1000, warmup_steps=10)
  model = models.create_model(config.model, spec.nu_init)
  size, length = config.model.image_size, config.model.context_length
  state = train_step.init_state(model, tx, jax.random.PRNGKey(0), (size, size, 3), length)
  rng = np.random.default_rng(0)
  batch = {"image": rng.standard_normal((devices, batch_size // devices, size, size, 3), np.float32),
           "text": rng.integers(1, 250, (devices, batch_size // devices, length)).astype(np.int32)}
  batch["text"][..., -1] = config.model.vocab_size - 1  # an end-of-text token to pool at
  batch = jax.pmap(lambda x: x)(batch)  # on the devices once, so steps time compute, not transfers
  step = train_step.make_pmapped_train_step(model, tx, spec.reparam, methods.swap_defaults())
  p_state = flax.jax_utils.replicate(state)
  compiled = step.lower(p_state, batch).compile()
  memory = compiled.memory_analysis()
  for _ in range(2):
    p_state, logs = step(p_state, batch)
  jax.block_until_ready(logs)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    p_state, logs = step(p_state, batch)
    jax.block_until_ready(logs)
    times.append(time.perf_counter() - start)
  median = statistics.median(times)
  out = {"step_s": median, "images_per_s": batch_size / median, "loss": float(logs["loss"][0])}
  if memory is not None:
    out["xla_bytes"] = float(memory.argument_size_in_bytes + memory.temp_size_in_bytes)
  return out


def bench_recall(n: int, dim: int) -> dict[str, float]:
  rng = np.random.default_rng(1)
  images = rng.standard_normal((n, dim)).astype(np.float32)
  images /= np.linalg.norm(images, axis=1, keepdims=True)
  texts = images + 0.5 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
  texts /= np.linalg.norm(texts, axis=1, keepdims=True)
  metrics.retrieval_recall(images[:2048], texts[:2048])  # compile the kernels once
  start = time.perf_counter()
  recall = metrics.retrieval_recall(images, texts)
  seconds = time.perf_counter() - start
  return {"seconds": seconds, "i2t_r1": recall["i2t_r1"], "dense_bytes": 4.0 * n * n,
          "chunk_bytes": 4.0 * 1024 * n}


def main(argv):
  del argv
  print(f"devices: {jax.local_device_count()} × {jax.devices()[0].device_kind} ({jax.default_backend()})")
  results = {}
  for dtype in ("float32", "bfloat16"):
    results[dtype] = bench_train_step(model_config(FLAGS.model), dtype, FLAGS.batch_size, FLAGS.steps)
    r = results[dtype]
    mem = f", XLA memory {r['xla_bytes'] / 2**30:.2f} GiB/device" if "xla_bytes" in r else ""
    print(f"train step {FLAGS.model} {dtype:8s} batch {FLAGS.batch_size}: {r['step_s'] * 1e3:8.1f} ms/step, "
          f"{r['images_per_s']:8.0f} images/s{mem}, loss {r['loss']:.4f}")
  f32, bf16 = results["float32"], results["bfloat16"]
  print(f"ratio bf16/f32 step time: {bf16['step_s'] / f32['step_s']:.3f}")
  if "xla_bytes" in f32 and "xla_bytes" in bf16:
    print(f"ratio bf16/f32 XLA memory: {bf16['xla_bytes'] / f32['xla_bytes']:.3f}")
  if FLAGS.recall_n:
    r = bench_recall(FLAGS.recall_n, FLAGS.recall_dim)
    print(f"recall {FLAGS.recall_n}×{FLAGS.recall_n}, d={FLAGS.recall_dim}: {r['seconds']:.2f} s "
          f"(i2t R@1 {r['i2t_r1']:.3f}); a dense score matrix would need {r['dense_bytes'] / 2**30:.1f} GiB, "
          f"one chunk holds {r['chunk_bytes'] / 2**20:.0f} MiB (ratio {r['dense_bytes'] / r['chunk_bytes']:.0f})")


if __name__ == "__main__":
  app.run(main)
