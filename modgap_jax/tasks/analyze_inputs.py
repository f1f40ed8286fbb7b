"""The inputs of the analyze task: embeddings files, and training runs to embed.

An input is an ``.npz`` file of embeddings, a directory holding ``embeddings.npz``, or a
modgap_jax training workdir (see :mod:`modgap_jax.tasks.analyze`). :func:`load_input` loads
any of them and checks its arrays; a bad input is a one-line ConfigError naming the file.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

import numpy as np

from modgap_jax import analysis
from modgap_jax.errors import ConfigError

NPZ_KEYS = ("image_emb", "text_emb", "text_to_image", "labels", "class_text_emb")


def load_npz(path: str) -> dict[str, Any]:
  """The arrays of an embeddings ``.npz``, checked (see the module docstring for the keys)."""
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise ConfigError(
      f"embeddings file {path!r} is not a readable .npz ({type(e).__name__}: "
      f"{str(e).splitlines()[0] if str(e) else ''})"
    ) from None
  for key in ("image_emb", "text_emb"):
    if key not in arrays:
      shape = "[N, d]" if key == "image_emb" else "[M, d]"
      raise ConfigError(
        f"embeddings file {path!r} has no key {key!r} (float {shape}); it holds "
        f"{', '.join(map(repr, sorted(arrays))) or 'nothing'}"
      )
  out = {k: arrays.get(k) for k in NPZ_KEYS}
  out["ignored_keys"] = sorted(set(arrays) - set(NPZ_KEYS))
  return out


def embed_run(run_dir: str) -> dict[str, Any]:
  """Restores a training workdir's latest checkpoint and embeds its eval split.

  The run is set up as its trainer set it up (:func:`modgap_jax.run_setup.setup_run` on its
  ``config.json``: the splits with their file options, its tokenizer, its model), and
  nothing is written into it. Returns the ``load_npz`` keys (labels and class prompts when
  the run's dataset has them) and ``run_beta``, the β the checkpoint had learned.
  """
  # Training imports are heavy and only this input kind needs them.
  import flax.jax_utils

  from modgap_jax import run_setup

  run = run_setup.setup_run(run_setup.read_run_config(run_dir), run_dir)
  variables = restore_variables(run_dir)
  nu = variables["params"]["temperature"]["nu"]
  return {**embed_split(run, flax.jax_utils.replicate(variables)), "run_beta": float(run.spec.reparam.beta(nu))}


def embed_split(run, variables) -> dict[str, Any]:
  """The ``load_npz`` keys of a set-up run's eval split, embedded with replicated ``variables``
  by the run's evaluator (labels and class prompts when the run's dataset has them)."""
  evaluator = run.evaluator
  image_emb, labels = evaluator.embed_images(variables, run.eval_split)
  text_emb, text_to_image = evaluator.embed_texts(variables, run.eval_split)
  return {
    "image_emb": image_emb,
    "text_emb": text_emb,
    "text_to_image": text_to_image,
    "labels": None if evaluator.label_key is None else np.asarray(labels[evaluator.label_key]),
    "class_text_emb": evaluator.class_embeddings(variables),
    "ignored_keys": [],
  }


def restore_variables(run_dir: str) -> dict[str, Any]:
  """``{'params', 'batch_stats'}`` of a run's latest checkpoint, read-only and without a template.

  Not ``checkpoint.Checkpointer.restore``: that one needs the current code's exact train-state
  tree (an older run's optimizer state may differ) and deletes checkpoints it cannot read,
  which an analysis of someone's run must never do.
  """
  import jax
  import orbax.checkpoint as ocp

  directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False, read_only=True))
  try:
    step = manager.latest_step()
    if step is None:
      raise ConfigError(f"run directory {run_dir!r} has no checkpoint under checkpoints/")
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore())
    except Exception as e:  # orbax reports damage with many exception types
      raise ConfigError(f"run directory {run_dir!r}: checkpoint {step} is unreadable ({type(e).__name__})") from None
  finally:
    manager.close()
  if not isinstance(state, dict) or "params" not in state:
    raise ConfigError(f"run directory {run_dir!r}: checkpoint {step} holds no 'params'")
  variables = {"params": state["params"]}
  if jax.tree_util.tree_leaves(state.get("batch_stats")):
    variables["batch_stats"] = state["batch_stats"]
  return variables


def input_kind(path: str) -> str:
  """'npz', 'dir_npz' or 'run' for a valid input path; a one-line ConfigError otherwise."""
  if os.path.isdir(path):
    if os.path.isfile(os.path.join(path, "embeddings.npz")):
      return "dir_npz"
    if all(os.path.exists(os.path.join(path, p)) for p in ("config.json", "tokenizer.json", "checkpoints")):
      return "run"
    raise ConfigError(
      f"embeddings={path!r} is a directory without embeddings.npz and is not a modgap_jax run "
      f"(config.json, tokenizer.json, checkpoints/)"
    )
  if not os.path.isfile(path):
    raise ConfigError(f"embeddings={path!r}: no such file or directory")
  if not path.endswith(".npz"):
    raise ConfigError(f"embeddings={path!r} must be an .npz file (keys {', '.join(NPZ_KEYS)}) or a run directory")
  return "npz"


def load_input(path: str) -> dict[str, Any]:
  """The checked arrays of one input (any kind); the ConfigError names the file."""
  kind = input_kind(path)
  if kind == "run":
    raw = embed_run(path)
  else:
    raw = load_npz(os.path.join(path, "embeddings.npz") if kind == "dir_npz" else path)
  try:
    analysis.validate_inputs(
      raw["image_emb"], raw["text_emb"], raw["text_to_image"], raw["labels"], raw["class_text_emb"]
    )
  except ConfigError as e:
    raise ConfigError(f"embeddings file {path!r}: {e}") from None
  raw["kind"] = kind
  return raw


def split_paths(spec: str) -> list[str]:
  paths = [p.strip() for p in str(spec or "").split(",") if p.strip()]
  if not paths:
    raise ConfigError(
      "embeddings is empty; set --config.embeddings=FILE.npz (or a run directory, or A,B,... to compare)"
    )
  return paths


def input_names(paths: list[str]) -> list[str]:
  """Short distinct names: the base name without .npz, with parent folders added until unique."""
  parts = [os.path.normpath(p).split(os.sep) for p in paths]
  for depth in range(1, max(len(p) for p in parts) + 1):
    names = [os.path.join(*p[-depth:]) for p in parts]
    names = [n[:-4] if n.endswith(".npz") else n for n in names]
    if len(set(names)) == len(names):
      return names
  return [f"{i}:{p}" for i, p in enumerate(paths)]
