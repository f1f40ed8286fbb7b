"""Fig. 4b: Theorem 3.3 on real data, the early rise of the gap over many random initialisations.

``num_inits`` random initialisations of the towers (init i's key is fold_in(seed, i)) each
take ``num_steps`` train steps on the same batches: the first ``num_steps`` training batches
of the first cell's config with seed 0, from the host pipeline (``data.train_batches``, clean
pairs, no crops). Δ = ‖mean(h^x) − mean(h^y)‖ is measured on the trainer's fixed ``gap_512``
sample of held-out pairs before and after; the rise is Δ(num_steps) − Δ(0).

One compiled step serves every initialisation: inits run ``fig4b_chunk`` at a time under
``vmap`` (bounding memory); the last chunk is padded with repeats, which are discarded.
Results are written after every chunk, and a rerun with the same settings resumes. SIGTERM
or SIGINT stops it at the next step: the chunk in progress is dropped, everything finished
is already in ``results.json``, and :class:`Preempted` says how far it got (exit 0 from the
entry point, with the command that resumes it). A resumed run computes the same chunks as
an uninterrupted one, so its results are the same.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from modgap_jax import data, preemption, run_io, run_setup
from modgap_jax import train_step as ts
from modgap_jax import workdir as workdir_lib
from modgap_jax.data import scenes
from modgap_jax.errors import ConfigError, Preempted
from modgap_jax.study import cells as cells_lib
from modgap_jax.study.paper import PAPER_FIG4B
from modgap_jax.study.results import load_results
from modgap_jax.study.tables import format_number


@dataclasses.dataclass
class Fig4bSetup:
  """Everything every initialisation shares: the run's model and optimizer, batches and held-out pairs."""

  run: run_setup.Run
  batches: list[dict[str, np.ndarray]]  # num_steps × {'image': [1, B, S, S, 3], 'text': [1, B, L]}
  pair_images: np.ndarray  # [P, S, S, 3], normalised
  pair_tokens: np.ndarray  # [P, L]
  pair_captions: np.ndarray  # [P] caption indices of the eval split
  learning_rates: list[float]  # the towers' rate at each of the steps
  lr_note: str

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.run.config

  @property
  def model(self):
    return self.run.training.model

  @property
  def tx(self):
    return self.run.training.tx

  @property
  def spec(self):
    return self.run.training.spec


def check_fig4b(study: ml_collections.ConfigDict) -> None:
  """Fig. 4b's own fields are positive integers."""
  if int(study.num_inits) < 1 or int(study.num_steps) < 1 or int(study.fig4b_chunk) < 1:
    raise ConfigError(
      f"num_inits={study.num_inits}, num_steps={study.num_steps} and "
      f"fig4b_chunk={study.fig4b_chunk} must be positive integers"
    )


def fig4b_config(study: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> tuple[Any, str]:
  """The training config whose schedule the Fig. 4b steps follow, and why.

  ``fig4b_lr < 0``: the regime's own schedule, warm-up included; its first steps see
  lr(k) = peak·k/warm-up, almost nothing (k ≤ 9 of a 100-step warm-up: ≤ 9 % of the peak).
  ``fig4b_lr = 0`` (default): the regime's peak rate with the warm-up left out, i.e. its
  cosine lr(k) = peak·½(1 + cos(πk/T)), within 0.03 % of the peak over 10 of T = 1 000 steps.
  ``fig4b_lr > 0``: that rate, the same way. ν keeps its ``temperature.lr_multiplier``.
  """
  lr = float(study.fig4b_lr)
  if lr < 0:
    return config, "the regime's schedule, warm-up included"
  config = config.copy_and_resolve_references()
  config.optimizer.warmup_epochs = 0
  if lr > 0:
    config.optimizer.learning_rate = lr
  return config, f"constant {config.optimizer.learning_rate:g} (the regime's cosine, no warm-up)"


def first_batches(run: run_setup.Run, stream: data.TrainStream, num_steps: int) -> list[dict[str, np.ndarray]]:
  """The run's first ``num_steps`` training batches on one device ([1, B, ...] leaves): the host
  pipeline's, or for the scenes world the scenes its stream draws at steps 0, 1, ..."""
  config = run.config
  if config.dataset.name != scenes.NAME:
    host = data.train_batches(run.train_split, stream)
    return [next(host) for _ in range(num_steps)]
  world = scenes.world_from_config(config.dataset, config.model.image_size)
  draw = jax.jit(scenes.stream_draw(world, stream, num_train=int(config.dataset.scenes.num_train)))
  return [jax.tree.map(lambda x: np.asarray(x)[None], draw(np.int32(step))) for step in range(num_steps)]


def fig4b_setup(study: ml_collections.ConfigDict, cell: cells_lib.Cell, workdir: str) -> Fig4bSetup:
  """Builds the shared pieces of Fig. 4b from ``cell``'s training config (seed 0); writes nothing."""
  config, note = fig4b_config(study, cell.seed_config(0))
  run = run_setup.setup_run(config, workdir)
  size, length = config.model.image_size, config.model.context_length

  # The first training batches of the host pipeline (seed 0): one device, clean pairs, no crops.
  stream = dataclasses.replace(run.stream, num_devices=1, process_index=0, process_count=1, crop_scale=None)
  num_steps = int(study.num_steps)
  batches = first_batches(run, stream, num_steps)

  # The same random held-out pairs as the trainer's ``gap_512`` (evaluation.embedding_metrics).
  eval_split = run.eval_split
  captions = [c for caps in eval_split.captions() for c in caps]
  caption_image = data.caption_image_index(eval_split)
  sample = np.random.default_rng(int(config.seed)).choice(
    len(captions), size=min(int(config.eval.gap_pairs), len(captions)), replace=False
  )
  images, _ = eval_split.fetch(caption_image[sample], size)
  return Fig4bSetup(
    run=run,
    batches=batches,
    pair_images=data.normalize(images, config.dataset.mean, config.dataset.std),
    pair_tokens=run.tokenizer.encode([captions[c] for c in sample], length),
    pair_captions=sample,
    learning_rates=[float(run.schedule(k)) for k in range(num_steps)],
    lr_note=note,
  )


def init_key(seed: int, index: int) -> jax.Array:
  """Initialisation ``index``'s key: independent of how the inits are chunked."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), index)


def gap_f64(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
  """Δ = ‖mean(image_emb) − mean(text_emb)‖₂ in float64."""
  return float(np.linalg.norm(np.asarray(image_emb, np.float64).mean(0) - np.asarray(text_emb, np.float64).mean(0)))


def _chunk_functions(setup: Fig4bSetup):
  """(init, step, embed), each jitted over a chunk of initialisations.

  ``train_step`` needs the named axis ``train_step.AXIS`` (it psums over it): an inner vmap
  over a leading axis of size 1 provides it; the outer vmap runs the initialisations.
  """
  run, model = setup.run, setup.model

  def init_one(key):
    state = run_setup.initial_state(run.config, run.training, key)
    return jax.tree.map(lambda x: x[None], state)  # the size-1 named axis

  step = functools.partial(ts.train_step, model=model, tx=setup.tx, reparam=setup.spec.reparam)
  on_axis = jax.vmap(step, axis_name=ts.AXIS)
  step_chunk = jax.jit(jax.vmap(on_axis, in_axes=(0, None)))

  def embed_one(state, images, tokens):
    variables = ts.model_variables(*jax.tree.map(lambda x: x[0], (state.params, state.batch_stats)))
    return model.apply(variables, images, tokens, train=False)

  embed_chunk = jax.jit(jax.vmap(embed_one, in_axes=(0, None, None)))
  return jax.jit(jax.vmap(init_one)), step_chunk, embed_chunk


def fig4b_fingerprint(study: ml_collections.ConfigDict, cell: cells_lib.Cell, setup: Fig4bSetup) -> dict[str, Any]:
  """What the per-init results depend on; partial results are reused only when it matches."""
  return run_io.to_jsonable(
    {
      "base_config": study.base_config,
      "cell": cell.name,
      "base_overrides": cells_lib.flatten_overrides(study.base_overrides),
      "num_steps": int(study.num_steps),
      "learning_rates": setup.learning_rates,
      "gap_pairs": len(setup.pair_captions),
      "seed": int(setup.config.seed),
    }
  )


def run_fig4b(study: ml_collections.ConfigDict, cell: cells_lib.Cell, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) Fig. 4b into ``workdir``; returns what results.json holds.

  Learning rate: see :func:`fig4b_config`. The regime warms up over 100 steps, so its own
  schedule gives the first 10 steps lr(k) = 5e-4·k/100, at most 4.5e-5; by default the 10
  steps instead run at the regime's peak 5e-4 (towers; ν at its ``lr_multiplier`` times that),
  as a run past its warm-up would. The rates used are recorded in results.json.

  Raises ConfigError before anything is written; Preempted when a stop signal arrived.
  """
  check_fig4b(study)
  setup = fig4b_setup(study, cell, workdir)  # every check, before the workdir is touched
  with workdir_lib.WorkdirLock(workdir), preemption.StopRequests() as stop:
    run_io.write_text(os.path.join(workdir, run_setup.TOKENIZER_FILE), setup.run.tokenizer.to_json())
    fingerprint = fig4b_fingerprint(study, cell, setup)
    done = _previous(workdir, fingerprint)
    todo = [i for i in range(int(study.num_inits)) if i not in done]
    bar = tqdm(
      total=int(study.num_inits),
      initial=int(study.num_inits) - len(todo),
      desc="fig4b inits",
      unit="init",
      disable=not study.progress_bar,
      dynamic_ncols=True,
    )
    try:
      chunks = _Chunks(setup)
      chunk = int(study.fig4b_chunk)
      for start in range(0, len(todo), chunk):
        results = chunks.run(todo[start : start + chunk], chunk, stop)
        if results is None:  # stopped inside the chunk: it is dropped, the rest was saved
          raise Preempted(stop.requested, f"after {len(done)} of {study.num_inits} initialisations in {workdir}")
        done.update(results)
        _write(study, cell, workdir, setup, fingerprint, done)
        bar.update(len(results))
        if stop.requested and len(done) < int(study.num_inits):
          raise Preempted(stop.requested, f"after {len(done)} of {study.num_inits} initialisations in {workdir}")
    finally:
      bar.close()
    return _write(study, cell, workdir, setup, fingerprint, done, final=True)


class _Chunks:
  """Runs a chunk of initialisations through the shared steps; compiled once for all chunks."""

  def __init__(self, setup: Fig4bSetup):
    self._seed = int(setup.config.seed)
    self._init, self._step, self._embed = _chunk_functions(setup)
    self._images, self._tokens = jax.numpy.asarray(setup.pair_images), jax.numpy.asarray(setup.pair_tokens)
    self._batches = [jax.tree.map(jax.numpy.asarray, b) for b in setup.batches]

  def run(self, indices: list[int], size: int, stop: preemption.StopRequests) -> dict[int, dict] | None:
    """Each init's record (Δ before and after, per-step Δ and τ); None if a stop arrived first."""
    padded = indices + [indices[-1]] * (size - len(indices))  # one compiled shape for every chunk
    states = self._init(jax.numpy.stack([init_key(self._seed, i) for i in padded]))
    before = jax.device_get(self._embed(states, self._images, self._tokens))
    batch_gaps, taus = [], []
    for batch in self._batches:
      if stop.requested:
        return None
      states, logs = self._step(states, batch)
      batch_gaps.append(np.asarray(logs["gap"])[:, 0])
      taus.append(np.asarray(logs["tau"])[:, 0])
    after = jax.device_get(self._embed(states, self._images, self._tokens))
    return {
      index: {
        "init": index,
        "gap_0": gap_f64(before[0][j], before[1][j]),
        "gap_final": gap_f64(after[0][j], after[1][j]),
        "batch_gaps": [float(g[j]) for g in batch_gaps],
        "taus": [float(t[j]) for t in taus],
      }
      for j, index in enumerate(indices)
    }


def _previous(workdir: str, fingerprint: dict[str, Any]) -> dict[int, dict[str, Any]]:
  """The per-init results of an earlier run of the same Fig. 4b, else nothing."""
  if not os.path.exists(os.path.join(workdir, "results.json")):
    return {}
  previous = load_results(workdir)
  if previous.get("study") != "fig4b" or previous.get("fingerprint") != fingerprint:
    return {}
  return {int(r["init"]): r for r in previous.get("inits", [])}


def fig4b_summary(done: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
  """Δ(0), Δ(final), rises, the share of rising inits and the mean rise, in init order."""
  inits = [done[i] for i in sorted(done)]
  gap0 = np.asarray([r["gap_0"] for r in inits], np.float64)
  gap1 = np.asarray([r["gap_final"] for r in inits], np.float64)
  rises = gap1 - gap0
  return {
    "gap_0": gap0.tolist(),
    "gap_final": gap1.tolist(),
    "rises": rises.tolist(),
    "share_rising": float(np.mean(rises > 0)) if len(rises) else None,
    "mean_rise": float(rises.mean()) if len(rises) else None,
    "std_rise": float(rises.std(ddof=1)) if len(rises) > 1 else 0.0,
  }


def _write(study, cell, workdir, setup: Fig4bSetup, fingerprint, done, final: bool = False) -> dict[str, Any]:
  from modgap_jax.plots import study as study_plots

  config = setup.config
  results = {
    "study": "fig4b",
    "cell": cell.name,
    "base_config": study.base_config,
    "base_overrides": cells_lib.flatten_overrides(study.base_overrides),
    "num_inits": len(done),
    "num_inits_planned": int(study.num_inits),
    "complete": len(done) >= int(study.num_inits),
    "num_steps": int(study.num_steps),
    "batch_size": int(config.batch_size),
    "gap_pairs": len(setup.pair_captions),
    "learning_rates": setup.learning_rates,
    "nu_learning_rates": [lr * float(config.temperature.lr_multiplier) for lr in setup.learning_rates],
    "lr": setup.learning_rates[0],
    "fig4b_lr": float(study.fig4b_lr),
    "lr_note": setup.lr_note,
    "paper": PAPER_FIG4B,
    "fingerprint": fingerprint,
    **fig4b_summary(done),
    "inits": [done[i] for i in sorted(done)],
  }
  run_io.write_json(os.path.join(workdir, "results.json"), results)
  if final:
    run_io.write_text(os.path.join(workdir, "table.md"), render_fig4b(results))
    study_plots.plot_fig4b(results, os.path.join(workdir, "fig4b.png"))
  return load_results(workdir)


def render_fig4b(results: dict[str, Any]) -> str:
  """Markdown summary of Fig. 4b beside the paper's numbers."""
  paper = results["paper"]
  share = results["share_rising"]
  return "\n".join(
    [
      "# Study `fig4b`: the gap rises at the start (Theorem 3.3)",
      "",
      f"{results['num_inits']} random initialisations of `{results['cell']}`, each {results['num_steps']} steps on "
      f"the same batches (batch {results['batch_size']}); Δ on {results['gap_pairs']} fixed held-out pairs.",
      f"Learning rate: {results['lr_note']}; towers' rate per step {results['learning_rates']}.",
      "",
      "| | ours | paper (Fig. 4b) |",
      "|---|---|---|",
      f"| initialisations | {results['num_inits']} | {paper['num_inits']} |",
      f"| steps | {results['num_steps']} | {paper['num_steps']} |",
      f"| share with Δ rising | {'—' if share is None else f'{100 * share:.0f} %'} | "
      f"{100 * paper['share_rising']:.0f} % |",
      f"| mean rise Δ(end) − Δ(0) | {format_number(results['mean_rise'])} ± {format_number(results['std_rise'])} | "
      f"≈ {paper['mean_rise']} |",
      f"| mean Δ(0) → Δ(end) | {format_number(np.mean(results['gap_0']))} → "
      f"{format_number(np.mean(results['gap_final']))} | |",
      "",
      "Figure: `fig4b.png` (histogram of the rises).",
      "",
    ]
  )
