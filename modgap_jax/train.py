"""``train_and_evaluate(config, workdir)``: the main job.

Trains CLIP from scratch with the configured temperature or swap method, evaluates every
MATH.md §2 metric on the held-out split, checkpoints with orbax, and writes ``config.json``,
``plan.json``, ``metrics.jsonl``, ``report.md`` and figures into ``workdir``. A run restarted
with the same workdir resumes from its latest checkpoint: same step, same data order, same
randomness.

Everything before the first step, and every check, is :func:`modgap_jax.run_setup.setup_run`;
this module is the loop: dispatches, logs, evaluations, checkpoints and the stop signals.
"""

from __future__ import annotations

import contextlib
import os

import flax.jax_utils
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from modgap_jax import checkpoint, events, preemption, report, run_io, run_setup, timing
from modgap_jax import train_step as train_step_lib
from modgap_jax import workdir as workdir_lib
from modgap_jax.errors import NonFiniteError, Preempted

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


def next_stop(step: int, total_steps: int, config: ml_collections.ConfigDict) -> int:
  """The first step after ``step`` at which the host must act: an eval, a checkpoint or the end.

  A dispatch never runs past it, so evaluations and checkpoints happen at exactly their steps.
  """
  stops = [total_steps, step + run_setup.steps_per_dispatch(config)]
  for every in (config.eval_every, config.checkpoint_every):
    stops.append((step // every + 1) * every)
  return min(stops)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, cache: run_setup.DataCache | None = None
) -> dict[str, float]:
  """Runs (or resumes) training and returns the final eval metrics.

  Raises ConfigError before anything is written for a bad config (the checks that need the
  data included), a workdir that holds a different run or is in use; NonFiniteError at the
  first non-finite step (policy 'stop'); Preempted after saving a checkpoint when SIGTERM or
  SIGINT arrived.

  Args:
    config: the run's config.
    workdir: where the run writes, and resumes from.
    cache: splits and tokenizers shared with other runs of this process (a study's).
  """
  clock = timing.PhaseClock()
  # Multi-host: every process trains its devices' share; only process 0 writes files (orbax
  # coordinates the checkpoints of all processes itself).
  primary = jax.process_index() == 0
  with clock("dataset"):
    run = run_setup.setup_run(config, workdir, cache=cache)
  with clock("setup"):
    state = run.initial_state()

  # Every check is done; only now does the run touch its workdir.
  lock = workdir_lib.WorkdirLock(workdir) if primary else contextlib.nullcontext()
  with lock, preemption.StopRequests() as stop:
    ckpt = checkpoint.Checkpointer(workdir, every=config.checkpoint_every, keep=config.keep_checkpoints)
    try:
      with clock("checkpoint"):
        restored = ckpt.restore(state)
    except BaseException:
      ckpt.close()
      raise
    if primary:
      run_setup.write_run_files(run)
    state = restored if restored is not None else state
    start_step = int(state.step)
    log = (
      run_io.MetricsLog(os.path.join(workdir, "metrics.jsonl"), resume_step=start_step) if primary else run_io.NullLog()
    )
    event_log = events.EventLog(workdir, resume_step=start_step, enabled=primary and bool(config.tensorboard))
    batches = run.data_mode
    try:
      with clock("dataset"):
        batches.start(run.training, start_step)
      final_eval, embeddings = _train_loop(run, batches, state, start_step, ckpt, log, event_log, stop, clock)
    except BaseException:
      event_log.close()  # a failed or stopped run writes no more events
      raise
    finally:
      batches.close()
      log.close()
      with clock("checkpoint"):
        ckpt.close()

    clock.move("train", "compile", batches.compile_seconds)
    with clock("outputs"):
      if primary:
        report.write_outputs(
          workdir,
          config,
          final_eval,
          embeddings,
          total_steps=run.plan.total_steps,
          num_devices=jax.device_count(),
          steps_per_dispatch=run.steps_per_dispatch,
          clock=clock,
          resumed_from=start_step,
        )
        event_log.image("embeddings_pca", run.plan.total_steps, os.path.join(workdir, "embeddings_pca.png"))
      event_log.close()
  return final_eval


def _train_loop(run, batches, state, start_step, ckpt, log, event_log, stop, clock):
  """Steps from ``start_step`` to the plan's total; returns the final evaluation and embeddings.

  Logs every ``log_every`` steps, evaluates every ``eval_every`` and at the end, checkpoints
  when due, at the end and when a stop signal arrived (then raises Preempted).
  """
  config, total_steps = run.config, run.plan.total_steps
  reparam = run.spec.reparam
  p_state = flax.jax_utils.replicate(state)
  final_eval, embeddings = None, None
  bar = tqdm(
    total=total_steps,
    initial=start_step,
    desc=f"train {config.method}",
    unit="step",
    disable=not (config.progress_bar and jax.process_index() == 0),
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
            host_logs["learning_rate"] = float(run.schedule(s - 1))
            host_logs["epoch"] = s / run.plan.steps_per_epoch
            log.write(s, "train", host_logs)
            event_log.scalars(s, "train", host_logs)
          bar.set_postfix(loss=f"{host_logs['loss']:.3f}", tau=f"{host_logs['tau']:.4f}", gap=f"{host_logs['gap']:.3f}")
      if len(bad):
        raise NonFiniteError(
          last_good + 1, train_step_lib.describe_nonfinite(codes[bad[0]]), ckpt.latest_step(), ckpt.directory
        )
      bar.update(stop_at - step)
      step = stop_at
      if step % config.eval_every == 0 or step == total_steps:
        with clock("eval"):
          final_eval, embeddings = run.evaluator.evaluate_state(p_state, reparam)
        log.write(step, "eval", final_eval)
        event_log.scalars(step, "eval", final_eval)
      if ckpt.is_due(step) or step == total_steps or stop.requested:  # fetch the state only to save it
        with clock("checkpoint"):
          ckpt.save(step, jax.device_get(flax.jax_utils.unreplicate(p_state)))
      if stop.requested and step < total_steps:
        raise Preempted(stop.requested, f"at step {step} of {total_steps}, checkpoint saved in {ckpt.directory}")
  finally:
    bar.close()
  if final_eval is None:  # the run had already finished: report the restored final state
    with clock("eval"):
      final_eval, embeddings = run.evaluator.evaluate_state(p_state, reparam)
  return final_eval, embeddings
