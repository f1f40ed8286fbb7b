"""The train state, the optimizer and the pmapped CLIP train step (MATH.md §1, §4).

One step, on each device under ``pmap(axis_name='batch')``:

1. ``model.apply`` gives L2-normalised ``image_emb, text_emb`` for the local rows;
2. the optional modality swap (MATH.md §4.2) acts on the local rows;
3. ``clip_loss(..., axis_name='batch')`` scores local rows against gathered columns;
4. gradients are combined across devices;
5. the optax update; the temperature leaf is routed by its mode inside ``tx``.

Several steps run per dispatch (:class:`MultiStep`): a ``lax.scan`` of the step inside one
pmapped call, so the host only launches work and reads logs. With a device-resident split
the step also draws its own batch (:func:`modgap_jax.data.resident.device_batch`); otherwise
it scans over k host batches stacked on a step axis.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from modgap_jax import losses, metrics, swap, temperature
from modgap_jax.data import resident

AXIS = "batch"


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, as one pytree (saved whole by orbax).

  ``rng`` is the run's base key; step k uses ``fold_in(rng, k)``, so a resumed run draws the
  same randomness as an uninterrupted one. ``nonfinite_skips`` counts the updates dropped
  under ``config.nonfinite = 'skip'``.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  nonfinite_skips: jax.Array


def model_variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  """The ``model.apply`` variables: params, and BatchNorm statistics when the model has any."""
  return {"params": params, **({"batch_stats": batch_stats} if jax.tree_util.tree_leaves(batch_stats) else {})}


def learning_rate_schedule(opt_cfg: ml_collections.ConfigDict, total_steps: int, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to ``opt_cfg.learning_rate``, then cosine decay to 0 (MATH.md §5.1)."""
  warmup_steps = min(max(int(warmup_steps), 0), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=opt_cfg.learning_rate,
    warmup_steps=warmup_steps,
    decay_steps=max(total_steps, warmup_steps + 1),
    end_value=0.0,
  )


def decay_mask(params: Any) -> Any:
  """True for the weight matrices and conv kernels, which alone get weight decay (CLIP's choice)."""

  def is_kernel(path, leaf):
    names = [getattr(k, "key", None) for k in path]
    return names[-1] == "kernel" and "temperature" not in names

  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(
  config: ml_collections.ConfigDict,
  total_steps: int,
  warmup_steps: int,
  schedule: optax.Schedule | None = None,
) -> tuple[optax.GradientTransformation, temperature.TemperatureSpec]:
  """AdamW (warm-up + cosine, decay on kernels only) with ν routed by its temperature mode.

  ``schedule``: the run's :func:`learning_rate_schedule`, when the caller already holds it
  (to log the rate); built here otherwise.
  """
  opt = config.optimizer
  spec = temperature.spec_from_config(config.temperature, schedule_duration=max(int(total_steps), 1))
  lr = schedule if schedule is not None else learning_rate_schedule(opt, total_steps, warmup_steps)
  rest = optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask)
  if opt.get("grad_clip_norm", None):
    rest = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), rest)
  tx = temperature.route_temperature(rest, spec, lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  return tx, spec


def init_state(
  model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, image_shape: tuple[int, ...], context_length: int
) -> TrainState:
  """Initialises params (and BatchNorm statistics, if any) on the host."""
  init_rng, state_rng = jax.random.split(rng)
  images = jnp.zeros((2, *image_shape), jnp.float32)
  tokens = jnp.zeros((2, context_length), jnp.int32)
  init = functools.partial(model.init, train=False)
  if isinstance(rng, jax.core.Tracer):  # traced by a caller's transformation (vmap over inits)
    variables = init(init_rng, images, tokens)
  else:
    # The initialiser runs once, so on a CPU XLA's backend optimisations only cost compile
    # time: 6.3 of the default model's 8 s initialisation on 2 cores, 3.0 s without them.
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    lowered = jax.jit(init).lower(init_rng, images, tokens)
    variables = lowered.compile(options if jax.default_backend() == "cpu" else None)(init_rng, images, tokens)
  params = variables["params"]
  return TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
    rng=state_rng,
    nonfinite_skips=jnp.zeros([], jnp.int32),
  )


NONFINITE_POLICIES = ("stop", "skip")
# Bits of the ``nonfinite`` log: which quantity of the step was not finite.
NONFINITE_PARTS = ("loss", "gradient norm", "parameters")


def nonfinite_code(loss: jax.Array, grad_norm: jax.Array, params: Any) -> jax.Array:
  """Σ_b 2^b·[part b is not finite] over (loss, gradient norm, updated parameters); 0 = all finite."""
  params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(params)]))
  bad = jnp.stack([~jnp.isfinite(loss), ~jnp.isfinite(grad_norm), ~params_finite])
  return jnp.sum(bad.astype(jnp.int32) * (2 ** jnp.arange(3, dtype=jnp.int32)))


def describe_nonfinite(code: int) -> str:
  """'loss, gradient norm' for code 3: the parts a :func:`nonfinite_code` flags."""
  return ", ".join(part for bit, part in enumerate(NONFINITE_PARTS) if int(code) >> bit & 1)


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model: nn.Module,
  tx: optax.GradientTransformation,
  reparam: temperature.Reparam,
  swap_method: str = "none",
  swap_p: float = 0.0,
  swap_renormalize: bool = True,
  skip_nonfinite: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimisation step on the local rows; call it under ``pmap(axis_name=AXIS)``.

  Returns the new state and the step's logs (global-batch values, identical on every device).
  ``logs['nonfinite']`` is :func:`nonfinite_code` of the step. With ``skip_nonfinite`` a
  flagged step keeps the old parameters, statistics and optimizer state (the step counter
  still advances) and adds one to ``nonfinite_skips``.
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  # MATH.md §4.2 [C]: each device swaps its own rows, with its own draw.
  swap_rng = jax.random.fold_in(step_rng, lax.axis_index(AXIS))
  has_bn = bool(jax.tree_util.tree_leaves(state.batch_stats))

  def loss_fn(params):
    variables = model_variables(params, state.batch_stats)
    if has_bn:
      (image_emb, text_emb), updated = model.apply(
        variables, batch["image"], batch["text"], train=True, mutable=["batch_stats"]
      )
      new_stats = updated["batch_stats"]
    else:
      image_emb, text_emb = model.apply(variables, batch["image"], batch["text"], train=True)
      new_stats = state.batch_stats
    swapped_image, swapped_text = swap.apply(
      swap_rng, image_emb, text_emb, swap_method, swap_p, renormalize=swap_renormalize
    )
    beta = temperature.beta_from_params(params, reparam)
    stats = losses.clip_loss_with_stats(swapped_image, swapped_text, beta, axis_name=AXIS)
    return stats.loss, (stats, new_stats, image_emb, text_emb, beta)

  grads, (stats, new_stats, image_emb, text_emb, beta) = jax.grad(loss_fn, has_aux=True)(state.params)
  # Each device's gradient is its share of ∂L/∂θ for the *global* loss (see losses.py): the
  # shares add up. (With a per-device mean loss this would be the usual pmean.)
  grads = lax.psum(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)

  grad_norm = optax.tree.norm(grads)
  code = nonfinite_code(stats.loss, grad_norm, params)
  skips = state.nonfinite_skips
  if skip_nonfinite:
    keep = code == 0
    params, new_stats, opt_state = jax.tree.map(
      lambda new, old: jnp.where(keep, new, old),
      (params, new_stats, opt_state),
      (state.params, state.batch_stats, state.opt_state),
    )
    skips = skips + (~keep).astype(jnp.int32)

  logs = {
    "loss": stats.loss,
    "loss_i2t": stats.loss_image_to_text,
    "loss_t2i": stats.loss_text_to_image,
    "positive_logit": stats.positive_logit,
    "negative_logit": stats.negative_logit,
    "nu": state.params["temperature"]["nu"],
    "beta": beta,
    "tau": 1.0 / beta,
    "grad_norm": grad_norm,
    "gap": metrics.modality_gap(image_emb, text_emb, axis_name=AXIS),
    "nonfinite": code,
    "nonfinite_skips": skips,
  }
  new_state = state.replace(
    step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state, nonfinite_skips=skips
  )
  return new_state, logs


def make_pmapped_train_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  reparam: temperature.Reparam,
  swap_cfg: ml_collections.ConfigDict,
  nonfinite: str = "stop",
):
  """``train_step`` pmapped over every local device; the replicated state is donated."""
  return jax.pmap(bind_step(model, tx, reparam, swap_cfg, nonfinite), axis_name=AXIS, donate_argnums=(0,))


def bind_step(
  model: nn.Module,
  tx: optax.GradientTransformation,
  reparam: temperature.Reparam,
  swap_cfg: ml_collections.ConfigDict,
  nonfinite: str = "stop",
) -> Callable:
  """``train_step`` with the model, optimizer, β map, swap settings and non-finite policy bound."""
  return functools.partial(
    train_step,
    model=model,
    tx=tx,
    reparam=reparam,
    swap_method=swap_cfg.method,
    swap_p=float(swap_cfg.p),
    swap_renormalize=bool(swap_cfg.renormalize),
    skip_nonfinite=nonfinite == "skip",
  )


def _scan_steps(
  body: Callable, state: TrainState, xs: Any, num_steps: int, unroll: bool
) -> tuple[TrainState, dict[str, jax.Array]]:
  """``num_steps`` applications of ``body(state, x)``, logs stacked on a leading axis.

  One step is called directly. Several run as a ``lax.scan``, fully unrolled when ``unroll``:
  XLA:CPU runs a train step inside a while loop about 2x slower than the same step outside
  one (measured on 2 cores, jax 0.10), so on CPU the loop is unrolled.
  """
  if num_steps == 1:
    state, logs = body(state, None if xs is None else jax.tree.map(lambda x: x[0], xs))
    return state, jax.tree.map(lambda x: x[None], logs)
  return lax.scan(body, state, xs, length=num_steps, unroll=num_steps if unroll else 1)


def device_drawn_steps(
  state: TrainState,
  *inputs: Any,
  step_fn: Callable,
  draw: Callable,
  num_steps: int,
  unroll: bool = False,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """``num_steps`` steps, each drawing batch ``state.step`` on the devices: ``draw(step, *inputs)``.

  ``draw`` returns this device's share of the global batch (``axis_name=AXIS``): from a
  resident split (``inputs`` = the split and its data key) or from a generated world (no
  inputs). Returns the final state and the logs of every step, stacked on a leading
  [num_steps] axis.
  """

  def body(state, _):
    return step_fn(state, draw(state.step, *inputs))

  return _scan_steps(body, state, None, num_steps, unroll)


def streamed_steps(
  state: TrainState, batches: dict[str, jax.Array], *, step_fn: Callable, num_steps: int, unroll: bool = False
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step per leading entry of ``batches`` ([num_steps, b, ...] leaves), logs stacked."""
  return _scan_steps(step_fn, state, batches, num_steps, unroll)


class MultiStep:
  """k train steps per pmapped dispatch, compiled once per k.

  ``run(k, p_state, *inputs)`` returns ``(p_state, logs)`` with logs [devices, k] per key.
  The state is donated. ``compile_seconds`` adds up the time spent compiling.
  """

  def __init__(self, steps_fn: Callable, static_kwargs: dict[str, Any]):
    self._steps_fn = steps_fn
    self._static_kwargs = {"unroll": jax.default_backend() == "cpu", **static_kwargs}
    self._compiled: dict[int, Any] = {}
    self.compile_seconds = 0.0

  def _compile(self, num_steps: int, *args) -> Any:
    if num_steps not in self._compiled:
      fn = functools.partial(self._steps_fn, **self._static_kwargs, num_steps=num_steps)
      pmapped = jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,))
      if jax.process_count() > 1:
        # Across processes, pmap's ahead-of-time path expects global shapes: let the first
        # call compile (its time then counts as training, not compilation).
        self._compiled[num_steps] = pmapped
        return pmapped
      start = time.perf_counter()
      self._compiled[num_steps] = pmapped.lower(*args).compile()
      self.compile_seconds += time.perf_counter() - start
    return self._compiled[num_steps]

  def run(self, num_steps: int, p_state: Any, *inputs: Any) -> tuple[Any, dict[str, jax.Array]]:
    return self._compile(num_steps, p_state, *inputs)(p_state, *inputs)


def make_resident_multistep(
  model: nn.Module,
  tx: optax.GradientTransformation,
  reparam: temperature.Reparam,
  swap_cfg: ml_collections.ConfigDict,
  sampling: resident.Sampling,
  nonfinite: str = "stop",
) -> MultiStep:
  """``run(k, p_state, p_split, p_data_key)``: k steps that draw their own batches on device."""
  draw = functools.partial(_resident_draw, sampling=sampling)
  return make_device_drawn_multistep(model, tx, reparam, swap_cfg, draw, nonfinite)


def _resident_draw(step, split, data_key, *, sampling):
  return resident.device_batch(split, data_key, step, sampling, axis_name=AXIS)


def make_device_drawn_multistep(
  model: nn.Module,
  tx: optax.GradientTransformation,
  reparam: temperature.Reparam,
  swap_cfg: ml_collections.ConfigDict,
  draw: Callable,
  nonfinite: str = "stop",
) -> MultiStep:
  """``run(k, p_state, *p_inputs)``: k steps, step s training on ``draw(s, *inputs)`` (see
  :func:`device_drawn_steps`)."""
  step_fn = bind_step(model, tx, reparam, swap_cfg, nonfinite)
  return MultiStep(device_drawn_steps, dict(step_fn=step_fn, draw=draw))


def make_streamed_multistep(
  model: nn.Module,
  tx: optax.GradientTransformation,
  reparam: temperature.Reparam,
  swap_cfg: ml_collections.ConfigDict,
  nonfinite: str = "stop",
) -> MultiStep:
  """``run(k, p_state, p_batches)`` with host batches stacked as [devices, k, b, ...]."""
  return MultiStep(streamed_steps, dict(step_fn=bind_step(model, tx, reparam, swap_cfg, nonfinite)))
