r"""Speed of our train step, and of embedding with a released model's shape, against open_clip's, in one run.

  python -m experiments.benchmark --recall_n=0        # CPU: configs/default.py's towers, batch 128
  python -m experiments.benchmark                     # GPU: CLIP RN50 at 224 px, batch 256
  python -m experiments.benchmark --peer=off --steps=10 --batch_size=64
  python -m experiments.benchmark --mode=embed        # ViT-B/32 image tower at 224 px, batch 64

``--mode=embed`` times what the measure task does with a released model (docs/pretrained.md):
the image tower of ViT-B-32-quickgelu (open_clip's config, bundled) at 224 px on a batch of 64
images, float32. Ours is the evaluator's pmapped ``CLIP.encode_image`` (``modgap_jax.evaluator``);
the peer is open_clip's ``model.encode_image(images, normalize=True)`` under
``torch.inference_mode()``, with the same weights (ours drawn at random, written into the
peer through ``pretrained.state_dict``), on the same batch, interleaved as below. It prints
images per second of each, the ratio open_clip ms / our ms, and the largest difference of the
two sides' unit embeddings.

What it prints, as plain lines (device, backend and date first):

1. Both models' parameter counts. On a CPU: configs/default.py's towers with BatchNorm (as in
   CLIP) in float32; on a GPU: RN50 at 224 px, float32 and bfloat16 compute (float32 params;
   the peer under ``torch.autocast``). open_clip's ``CLIP`` is built with the same shapes and
   QuickGELU, trained with its ``ClipLoss`` and ``torch.optim.AdamW`` (eager torch), with our
   config's learning rate, betas, eps and weight decay on weight matrices only.
   The computations differ where ours skips work that cannot reach the loss: our text
   Transformer's last block computes only the end-of-text row that the tower reads out (keys
   and values still from every row; the same outputs and gradients, 41 % fewer text FLOPs for
   the default towers), where open_clip runs every row; and our 3x3 convs over maps narrower
   than the kernel are sums of shifted matmuls (see ``modgap_jax.models.resnet.Conv2d``).
2. The train step: ours is the trainer's pmapped step (``train_step.make_pmapped_train_step``);
   both run on one fixed batch already on the device, in interleaved rounds of a few steps so
   that both see the same machine load. Median ms/step, examples (image-caption pairs) per
   second and the ratio open_clip ms / our ms (≥ 1: we are faster).
3. Forward+backward of each tower alone (sum of its normalised embeddings), interleaved the
   same way: it shows where the time goes.
4. Ours: XLA's FLOPs per step and device (``cost_analysis``), MFU against the device's dense
   peak where it is known, and XLA's compiled memory (arguments + temporaries).
5. ``metrics.retrieval_recall`` at N × N (``--recall_n``, 0 skips it): time, and the bytes a
   dense similarity matrix would need, against the chunked peak.

On a CPU, torch is set to as many threads as JAX's CPU client uses (all the cores). Run it
on an otherwise idle machine: torch's OpenMP threads wait on each other at every op, and when
other processes hold the cores that costs an order of magnitude (open_clip's tiny step took
6.3 s with 2 threads against 0.43 s with 1, on 2 cores at load average 5). The first line
gives the load average.
On a GPU, float32 matmuls run on TF32 tensor cores on both sides: that is XLA's default
precision, and open_clip's training script turns TF32 and cuDNN autotuning on; MFU for
float32 is therefore taken against the TF32 peak.

Installing the peer (optional; training never needs it)::

  pip install -e '.[bench]'    # torch 2.13.0, torchvision 0.28.0, open_clip_torch 3.3.0

On a CPU-only machine pip must find a CPU build of torch 2.13.0 first (a local wheel on
its find-links path, or PyTorch's CPU wheel index); otherwise it pulls the CUDA build and
several GB of CUDA packages. torchvision has no CPU build on PyPI: its wheels link against
CUDA torch, so on CPU torch their compiled ops do not load and ``import torchvision`` stops
with "operator torchvision::nms does not exist". open_clip needs only torchvision's
pure-Python transforms and ``FrozenBatchNorm2d``, so :func:`import_peer` declares the two
missing op schemas and imports again; nothing here calls them.

Results of runs on real hardware are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

# JAX would take 75% of GPU memory at start-up and leave torch too little; read when JAX first
# initialises a backend, so set before any of that.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import default  # noqa: E402
from modgap_jax import data, metrics, models, numerics, pretrained, run_setup, train_step  # noqa: E402
from modgap_jax.data import scenes  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum(
  "model",
  "auto",
  ["auto", "tiny", "rn50"],
  "configs/default.py's towers with BatchNorm, or CLIP RN50 at 224 px; auto: tiny on a CPU, rn50 on a GPU.",
)
flags.DEFINE_integer("batch_size", 0, "Global batch size, split over the local devices (0: 128 tiny, 256 rn50).")
flags.DEFINE_integer(
  "steps", 0, "Timed steps (batches) per measurement and contender, in interleaved rounds of 5 (0: 50; embed: 20)."
)
flags.DEFINE_enum("mode", "train", ["train", "embed"], "Time the train step, or embedding with ViT-B/32 (see above).")
flags.DEFINE_enum("peer", "on", ["on", "off"], "Also time open_clip (needs the [bench] extra).")
flags.DEFINE_integer("recall_n", 50_000, "Images and captions for the recall benchmark (0 skips it).")
flags.DEFINE_integer("recall_dim", 512, "Embedding width for the recall benchmark.")

PEER_MISSING = "open_clip is not installed: pip install -e '.[bench]' to compare against it"
ROUND_STEPS = 5
WARMUP_STEPS = 2
DEFAULT_BATCH = {"tiny": 128, "rn50": 256}
# Dense peak FLOP/s per device, found by substring of jax's device_kind (first match wins).
# float32 is the TF32 tensor-core peak, since that is what XLA runs float32 matmuls on.
PEAK_FLOPS = (
  ("H200", {"bfloat16": 989e12, "float32": 494.7e12}),
  ("H100 80GB HBM3", {"bfloat16": 989e12, "float32": 494.7e12}),  # H100 SXM
  ("A100", {"bfloat16": 312e12, "float32": 156e12}),
)


@dataclasses.dataclass
class Contender:
  """One side of the race: ``run(n)`` does n steps and waits until the device is done."""

  name: str
  num_params: int
  step: Callable[[int], None]
  image: Callable[[int], None]  # forward+backward of the image tower alone
  text: Callable[[int], None]  # forward+backward of the text tower alone


def model_config(name: str):
  """The trainer config whose model both sides build; BatchNorm synced over the pmap axis."""
  config = default.get_config()
  if name == "rn50":
    config.model = models.rn50_config()
  config.model.resnet.norm = "batch"  # CLIP's norm, and the only one open_clip's ResNet has
  config.model.resnet.axis_name = train_step.AXIS
  return config


def make_batch(model_cfg, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random images [n, S, S, 3] and captions [n, L] of random lengths, each ending in EOT."""
  rng = np.random.default_rng(seed)
  size, length, eot = model_cfg.image_size, model_cfg.context_length, model_cfg.vocab_size - 1
  images = rng.standard_normal((batch_size, size, size, 3), np.float32)
  tokens = rng.integers(1, eot, (batch_size, length))
  lengths = rng.integers(2, length + 1, batch_size)
  tokens = np.where(np.arange(length) < lengths[:, None] - 1, tokens, 0)  # padding after EOT
  tokens[np.arange(batch_size), lengths - 1] = eot  # both towers pool at the largest id
  return {"image": images, "text": tokens.astype(np.int32)}


# ----------------------------------------------------------------------------- ours


def build_ours(config, batch: dict[str, np.ndarray]) -> tuple[Contender, Any]:
  """Our trainer's pmapped step and per-tower gradients; also returns the step's Compiled."""
  devices = jax.local_device_count()
  # The trainer's own model, optimizer and initial state, for a 1 000-step run with 10 warm-up steps.
  _, training = run_setup.make_training(config, run_setup.StepPlan(1000, total_steps=1000, warmup_steps=10))
  model, tx, spec = training.model, training.tx, training.spec
  state = run_setup.initial_state(config, training)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
  p_batch = jax.tree_util.tree_map(lambda x: shard(x.reshape(devices, -1, *x.shape[1:])), batch)
  p_state = jax.tree_util.tree_map(lambda x: shard(np.stack([np.asarray(x)] * devices)), state)
  p_step = train_step.make_pmapped_train_step(model, tx, spec.reparam, config.swap)
  compiled = p_step.lower(p_state, p_batch).compile()

  def step(n):
    nonlocal p_state
    for _ in range(n):
      p_state, logs = compiled(p_state, p_batch)
    jax.block_until_ready(logs)

  def tower(name, inputs):
    grads = jax.pmap(_tower_grads(model, name), axis_name=train_step.AXIS)
    fn = grads.lower(p_state.params, p_state.batch_stats, inputs).compile()
    return lambda n: jax.block_until_ready([fn(p_state.params, p_state.batch_stats, inputs) for _ in range(n)])

  return Contender("ours", num_params, step, tower("image", p_batch["image"]), tower("text", p_batch["text"])), compiled


def shard(x: np.ndarray) -> jax.Array:
  """[devices, ...] → one slice per local device, as pmap takes them; placed once, so that steps
  time compute, not transfers.

  The state is replicated with this too, stacked on the host: the same layout as
  ``flax.jax_utils.replicate``, without its one small compile per leaf shape (5 s of a smoke test).
  """
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("devices",))
  return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices")))


def _tower_grads(model, tower: str) -> Callable:
  """(params, batch_stats, inputs) → ∂ sum(normalised embeddings) / ∂ params[tower]."""

  def loss(tower_params, params, batch_stats, inputs):
    variables = {"params": {**params, tower: tower_params}, "batch_stats": batch_stats}
    if tower == "image":
      emb, _ = model.apply(variables, inputs, train=True, mutable=["batch_stats"], method=models.CLIP.encode_image)
    else:
      emb = model.apply(variables, inputs, method=models.CLIP.encode_text)
    return jnp.sum(emb)

  return lambda params, batch_stats, inputs: jax.grad(loss)(params[tower], params, batch_stats, inputs)


def xla_costs(compiled) -> tuple[float | None, float | None]:
  """(FLOPs, bytes of arguments + temporaries) of one pmapped call per device, where XLA says."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  memory = compiled.memory_analysis()
  mem_bytes = None if memory is None else float(memory.argument_size_in_bytes + memory.temp_size_in_bytes)
  return (cost or {}).get("flops"), mem_bytes


def peak_flops(device_kind: str, dtype: str) -> float | None:
  for key, peaks in PEAK_FLOPS:
    if key in device_kind:
      return peaks[dtype]
  return None


# ----------------------------------------------------------------------------- the peer

_torchvision_ops = None  # keeps the op schemas of import_peer registered (a Library drops them when freed)


def import_peer() -> tuple[Any, Any] | None:
  """(torch, open_clip), or None after printing one line when either is not installed."""
  try:
    import torch
  except ImportError:
    print(PEER_MISSING)
    return None
  try:
    import torchvision  # noqa: F401
  except ImportError:
    pass  # open_clip's own import then says so
  except RuntimeError as e:
    if "torchvision::nms" not in str(e):
      raise
    _declare_torchvision_ops(torch)
  try:
    import open_clip
  except ImportError:
    print(PEER_MISSING)
    return None
  return torch, open_clip


def _declare_torchvision_ops(torch) -> None:
  """Lets a CUDA torchvision wheel import on CPU torch (see the module docstring)."""
  global _torchvision_ops
  for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
    del sys.modules[name]  # the failed import left half-initialised modules behind
  _torchvision_ops = torch.library.Library("torchvision", "FRAGMENT")
  for op in ("nms", "qnms"):
    _torchvision_ops.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
  import torchvision  # noqa: F401


def build_peer(torch, open_clip, config, batch: dict[str, np.ndarray], dtype: str) -> Contender:
  """open_clip's CLIP with our shapes, its ClipLoss and torch AdamW, on the fixed batch."""
  device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  model = peer_model(open_clip, config.model).to(device).train()
  num_params = sum(p.numel() for p in model.parameters())
  optimizer = peer_optimizer(torch, model, config.optimizer)
  loss_fn = open_clip.ClipLoss(cache_labels=True)
  images = torch.from_numpy(batch["image"].transpose(0, 3, 1, 2).copy()).to(device)  # NHWC → NCHW
  tokens = torch.from_numpy(batch["text"]).long().to(device)
  autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if dtype == "bfloat16" else contextlib.nullcontext
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

  def step(n):
    for _ in range(n):
      optimizer.zero_grad(set_to_none=True)
      with autocast():
        image_emb, text_emb, logit_scale = model(images, tokens)
        loss = loss_fn(image_emb, text_emb, logit_scale)
      loss.backward()  # outside autocast, as open_clip's training loop does
      optimizer.step()
    sync()

  def tower(encode, inputs):
    def run(n):
      for _ in range(n):
        model.zero_grad(set_to_none=True)
        with autocast():
          emb = encode(inputs, normalize=True)
        emb.float().sum().backward()
      sync()

    return run

  return Contender("open_clip", num_params, step, tower(model.encode_image, images), tower(model.encode_text, tokens))


def peer_model(open_clip, model_cfg):
  """open_clip.CLIP of our shapes: ModifiedResNet + text Transformer, QuickGELU as ours."""
  r, t = model_cfg.resnet, model_cfg.text
  if model_cfg.image_tower != "resnet" or len(r.layers) != 4:
    raise ValueError("open_clip's ModifiedResNet has exactly four stages")
  # open_clip derives the attention-pool heads from a head width over its width·32 channels.
  vision = open_clip.CLIPVisionCfg(
    layers=tuple(r.layers), width=r.width, head_width=r.width * 32 // r.heads, image_size=model_cfg.image_size
  )
  text = open_clip.CLIPTextCfg(
    context_length=model_cfg.context_length,
    vocab_size=model_cfg.vocab_size,
    width=t.width,
    heads=t.heads,
    layers=t.depth,
  )
  return open_clip.CLIP(model_cfg.embed_dim, vision, text, quick_gelu=True)


def peer_optimizer(torch, model, opt_cfg):
  """torch AdamW with weight decay on the weight matrices and conv kernels, as ours.

  Our mask decays every 'kernel' (dense, conv, attention) and nothing else; in torch those
  are the tensors of two or more dimensions other than the token and positional embeddings.
  """
  decay, rest = [], []
  for name, p in model.named_parameters():
    (decay if p.ndim >= 2 and "embedding" not in name else rest).append(p)
  groups = [{"params": decay, "weight_decay": opt_cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
  return torch.optim.AdamW(groups, lr=opt_cfg.learning_rate, betas=(opt_cfg.b1, opt_cfg.b2), eps=opt_cfg.eps)


def configure_torch(torch) -> str:
  """Thread count on a CPU, TF32 and cuDNN autotuning on a GPU; returns what it set."""
  if jax.default_backend() == "gpu":
    torch.backends.cuda.matmul.allow_tf32 = True  # as open_clip's training script, and XLA's default
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return "torch: TF32 matmuls and convolutions, cuDNN autotuning (open_clip's training settings)"
  cores = len(os.sched_getaffinity(0))
  torch.set_num_threads(cores)
  return f"threads: JAX's CPU client uses all {cores} cores; torch.set_num_threads({cores})"


# ----------------------------------------------------------------------------- timing


def interleave(runs: dict[str, Callable[[int], None]], steps: int) -> dict[str, float]:
  """Median seconds per step of each run, timed in alternating rounds after a warm-up."""
  for run in runs.values():
    run(WARMUP_STEPS)
  per_round = min(ROUND_STEPS, steps)
  times = {name: [] for name in runs}
  order = list(runs)
  for _ in range(numerics.ceil_div(steps, per_round)):
    for name in order:
      start = time.perf_counter()
      runs[name](per_round)
      times[name].append((time.perf_counter() - start) / per_round)
    order.reverse()  # neither side always runs first, right after the other
  return {name: statistics.median(t) for name, t in times.items()}


def report(label: str, medians: dict[str, float], batch_size: int) -> None:
  parts = [f"{name} {s * 1e3:.1f} ms/step ({batch_size / s:.0f} examples/s)" for name, s in medians.items()]
  if "open_clip" in medians:
    parts.append(f"open_clip/ours {medians['open_clip'] / medians['ours']:.2f}")
  print(f"{label}: " + ", ".join(parts))


def report_xla(dtype: str, compiled, step_s: float) -> None:
  flops, mem_bytes = xla_costs(compiled)
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind, dtype)
  if flops is None:
    mfu = "no FLOP count from XLA"
  elif peak is None:
    mfu = f"{flops / 1e9:.2f} GFLOP/step/device, unknown peak for '{kind}'"
  else:
    mfu = (
      f"{flops / 1e9:.2f} GFLOP/step/device, MFU {flops / step_s / peak:.1%} "
      f"of {peak / 1e12:.0f} TFLOP/s ({dtype} dense peak)"
    )
  mem = "" if mem_bytes is None else f"; XLA memory {mem_bytes / 2**30:.2f} GiB/device"
  print(f"{dtype} ours XLA: {mfu}{mem}")


# ----------------------------------------------------------------------------- recall


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
  return {"seconds": seconds, "i2t_r1": recall["i2t_r1"], "dense_bytes": 4.0 * n * n, "chunk_bytes": 4.0 * 1024 * n}


def report_recall(n: int, dim: int) -> None:
  r = bench_recall(n, dim)
  print(
    f"recall {n}×{n}, d={dim}: {r['seconds']:.2f} s (i2t R@1 {r['i2t_r1']:.3f}); a dense score matrix "
    f"would need {r['dense_bytes'] / 2**30:.1f} GiB, one chunk holds {r['chunk_bytes'] / 2**20:.0f} MiB "
    f"(ratio {r['dense_bytes'] / r['chunk_bytes']:.0f})"
  )


# ----------------------------------------------------------------------------- embedding (--mode=embed)

EMBED_CONFIG = "ViT-B-32-quickgelu"  # OpenAI's ViT-B/32, as open_clip names its config
EMBED_BATCH = 64
EMBED_STEPS = 20


def embed_variables(model_cfg, seed: int = 0) -> dict:
  """Random variables of ``model_cfg``'s shapes, drawn in NumPy (a ViT-B/32 init through XLA
  takes minutes on 2 cores): norm scales near 1, everything else N(0, 0.02²)."""
  rng = np.random.default_rng(seed)
  variables: dict = {}
  for path, shape in pretrained.layout.variable_shapes(model_cfg).items():
    value = rng.normal(scale=0.02, size=shape).astype(np.float32) + np.float32(path[-1] == "scale")
    node = variables
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  variables["params"]["temperature"] = {"nu": np.asarray(np.log(100.0), np.float32)}
  return variables


def build_embed_ours(model_cfg, variables: dict, images: np.ndarray) -> tuple[Callable[[int], None], Callable]:
  """The evaluator's image embedding (pmapped over the local devices) on the fixed batch; also
  returns a function giving its [n, d] embeddings, for the comparison with the peer."""
  devices = jax.local_device_count()
  model = models.create_model(model_cfg, float(variables["params"]["temperature"]["nu"]))
  encode = jax.pmap(functools.partial(model.apply, train=False, method=models.CLIP.encode_image))
  p_variables = jax.tree_util.tree_map(lambda x: shard(np.stack([x] * devices)), variables)
  p_images = shard(images.reshape(devices, -1, *images.shape[1:]))
  compiled = encode.lower(p_variables, p_images).compile()

  def run(n):
    jax.block_until_ready([compiled(p_variables, p_images) for _ in range(n)])

  return run, lambda: np.asarray(compiled(p_variables, p_images)).reshape(len(images), -1)


def build_embed_peer(torch, open_clip, model_cfg, variables: dict, images: np.ndarray):
  """open_clip's model of ``EMBED_CONFIG`` holding our weights; ``encode_image`` under inference mode."""
  logging.disable(logging.WARNING)  # open_clip logs each step of building, and that it loaded no weights
  try:
    model = open_clip.create_model(EMBED_CONFIG, pretrained=None).eval()  # random init, nothing downloaded
  finally:
    logging.disable(logging.NOTSET)
  state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in pretrained.state_dict(variables, model_cfg).items()}
  model.load_state_dict(state)
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())  # NHWC → NCHW

  def embed():
    with torch.inference_mode():
      return model.encode_image(pixels, normalize=True)

  def run(n):
    for _ in range(n):
      embed()

  return run, lambda: embed().numpy(), sum(p.numel() for p in model.visual.parameters())


def run_embed(batch_size: int = EMBED_BATCH, steps: int = EMBED_STEPS, peer: bool = True) -> dict[str, float]:
  """Prints the embedding benchmark (see the module docstring); returns the median s/batch of each side."""
  print(describe_device())
  model_cfg, _ = pretrained.to_model_config(EMBED_CONFIG)
  peer_modules = import_peer() if peer else None
  if peer_modules:
    print(configure_torch(peer_modules[0]))
    print(
      f"peer: open_clip {peer_modules[1].__version__} (torch {peer_modules[0].__version__}), encode_image, "
      "inference mode"
    )
  per_round = min(ROUND_STEPS, steps)
  print(
    f"embed: {EMBED_CONFIG} image tower at {model_cfg.image_size} px, batch {batch_size}, float32; median over "
    f"{numerics.ceil_div(steps, per_round)} interleaved rounds of {per_round} batches, after {WARMUP_STEPS} "
    "warm-up batches"
  )
  variables = embed_variables(model_cfg)
  images = np.random.default_rng(1).standard_normal((batch_size, model_cfg.image_size, model_cfg.image_size, 3))
  images = images.astype(np.float32)
  ours, ours_emb = build_embed_ours(model_cfg, variables, images)
  runs = {"ours": ours}
  counts = f"ours {sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(variables['params']['image'])):,}"
  if peer_modules:
    runs["open_clip"], peer_emb, peer_count = build_embed_peer(*peer_modules, model_cfg, variables, images)
    difference = float(np.max(np.abs(ours_emb() - peer_emb())))
    counts += (
      f", open_clip {peer_count:,}; same weights: max |ours − open_clip| over the unit embeddings {difference:.1e}"
    )
  print(f"image tower parameters: {counts}")
  medians = interleave(runs, steps)
  parts = [f"{name} {s * 1e3:.0f} ms/batch ({batch_size / s:.1f} images/s)" for name, s in medians.items()]
  if "open_clip" in medians:
    parts.append(f"open_clip/ours {medians['open_clip'] / medians['ours']:.2f}")
  print("float32 embed: " + ", ".join(parts))
  return medians


# ----------------------------------------------------------------------------- main


def describe_device() -> str:
  backend = jax.default_backend()
  kind = jax.devices()[0].device_kind
  if backend == "cpu":
    # torch's OpenMP threads suffer most when other processes share the cores: say so.
    kind = f"{kind} ({_cpu_model()}, {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f})"
  return (
    f"benchmark {datetime.date.today().isoformat()}: {jax.local_device_count()} × {kind}, "
    f"backend {backend}, jax {jax.__version__}"
  )


def _cpu_model() -> str:
  with contextlib.suppress(OSError):
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  return "unknown model"


def describe_setup(name: str, config, batch_size: int, steps: int) -> None:
  m, o = config.model, config.optimizer
  print(
    f"model {name}: ResNet layers {tuple(m.resnet.layers)} width {m.resnet.width} (BatchNorm) at "
    f"{m.image_size} px, text width {m.text.width} depth {m.text.depth}, embed {m.embed_dim}; batch "
    f"{batch_size}; AdamW lr {o.learning_rate} b1 {o.b1} b2 {o.b2} eps {o.eps}, weight decay "
    f"{o.weight_decay} on weight matrices"
  )
  per_round = min(ROUND_STEPS, steps)
  print(
    f"timing: median over {numerics.ceil_div(steps, per_round)} interleaved rounds of {per_round} steps, "
    f"after {WARMUP_STEPS} warm-up steps"
  )


def run(
  model: str = "auto", batch_size: int = 0, steps: int = 50, peer: bool = True, recall_n: int = 0, recall_dim: int = 512
) -> None:
  """Prints the whole benchmark (see the module docstring)."""
  gpu = jax.default_backend() == "gpu"
  name = ("rn50" if gpu else "tiny") if model == "auto" else model
  batch_size = batch_size or DEFAULT_BATCH[name]
  print(describe_device())
  peer_modules = import_peer() if peer else None
  if peer_modules and gpu and not peer_modules[0].cuda.is_available():
    print("open_clip skipped: this torch build has no CUDA")
    peer_modules = None
  if peer_modules:
    torch, open_clip = peer_modules
    print(configure_torch(torch))
    print(f"peer: open_clip {open_clip.__version__} (torch {torch.__version__}, eager), ClipLoss, torch.optim.AdamW")
  describe_setup(name, model_config(name), batch_size, steps)
  for dtype in ("float32", "bfloat16") if gpu else ("float32",):
    compare(name, dtype, batch_size, steps, peer_modules)
    if peer_modules and gpu:
      peer_modules[0].cuda.empty_cache()  # hand the last dtype's blocks back before the next
  if recall_n:
    report_recall(recall_n, recall_dim)


def compare(name: str, dtype: str, batch_size: int, steps: int, peer_modules: tuple[Any, Any] | None) -> None:
  """Builds both sides in ``dtype`` on one batch and prints their step and tower timings."""
  config = model_config(name)
  config.model.dtype = dtype
  batch = make_batch(config.model, batch_size)
  ours, compiled = build_ours(config, batch)
  contenders = [ours] + ([build_peer(*peer_modules, config, batch, dtype)] if peer_modules else [])
  if dtype == "float32":
    report_params(contenders)
  medians = interleave({c.name: c.step for c in contenders}, steps)
  report(f"{dtype} train step", medians, batch_size)
  for tower in ("image", "text"):
    report(
      f"{dtype} {tower} tower fwd+bwd", interleave({c.name: getattr(c, tower) for c in contenders}, steps), batch_size
    )
  report_xla(dtype, compiled, medians["ours"])
  if dtype == "float32":
    report_scenes(config, batch_size, ours.step, steps)


def scenes_generator(config, batch_size: int) -> Callable[[int], None]:
  """n batches of the scenes world (default world, the model's image size), jitted, each
  device drawing its share under pmap as the scenes data mode does inside the step."""
  world = scenes.SceneWorld(image_size=config.model.image_size)
  devices = jax.local_device_count()
  stream = data.TrainStream(
    global_batch_size=batch_size,
    num_devices=devices,
    image_size=config.model.image_size,
    context_length=config.model.context_length,
    seed=0,
    mean=config.dataset.mean,
    std=config.dataset.std,
  )
  p_draw = jax.pmap(scenes.stream_draw(world, stream, axis_name=train_step.AXIS), axis_name=train_step.AXIS)
  steps = np.zeros(devices, np.int32)

  def generate(n):
    for k in range(n):
      out = p_draw(steps + k)
    jax.block_until_ready(out)

  return generate


def report_scenes(config, batch_size: int, our_step: Callable[[int], None], steps: int) -> None:
  """The cost of drawing a scenes batch beside our train step (the scenes mode pays both)."""
  if config.model.image_size < scenes.SceneWorld.MIN_IMAGE_SIZE:
    print(f"scenes batch generation: not timed (the world renders {scenes.SceneWorld.MIN_IMAGE_SIZE} px and up)")
    return
  medians = interleave({"ours": our_step, "scenes": scenes_generator(config, batch_size)}, steps)
  share = medians["scenes"] / medians["ours"]
  print(
    f"scenes batch generation ({batch_size} scenes at {config.model.image_size} px): "
    f"{medians['scenes'] * 1e3:.2f} ms, {share:.1%} of our train step ({medians['ours'] * 1e3:.1f} ms)"
  )


def report_params(contenders: list[Contender]) -> None:
  counts = ", ".join(f"{c.name} {c.num_params:,}" for c in contenders)
  if len(contenders) > 1:
    diff = contenders[1].num_params - contenders[0].num_params
    counts += " (equal)" if diff == 0 else f" (open_clip has {diff:+,})"
  print(f"parameters: {counts}")


def main(argv):
  del argv
  if FLAGS.mode == "embed":
    run_embed(FLAGS.batch_size or EMBED_BATCH, FLAGS.steps or EMBED_STEPS, FLAGS.peer == "on")
  else:
    run(FLAGS.model, FLAGS.batch_size, FLAGS.steps or 50, FLAGS.peer == "on", FLAGS.recall_n, FLAGS.recall_dim)


if __name__ == "__main__":
  app.run(main)
