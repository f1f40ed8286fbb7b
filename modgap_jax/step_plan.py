"""A run's step plan: steps per epoch, total steps and learning-rate warm-up steps.

The trainer writes it into its run directory as ``plan.json``, so that a study (which asks
whether a run has finished) or any reader of the run never infers it from the log.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections

from modgap_jax import data

PLAN_FILE = "plan.json"


@dataclasses.dataclass(frozen=True)
class StepPlan:
  """How many steps a run takes: its epoch, its total and its learning-rate warm-up.

  Stored in the run directory as ``plan.json`` (:meth:`to_dict`, :func:`read_plan`).
  """

  steps_per_epoch: int
  total_steps: int
  warmup_steps: int

  def to_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)


def plan_steps(config: ml_collections.ConfigDict, examples_per_epoch: int) -> StepPlan:
  """The plan of the epoch-based config: ``steps_per_epoch = examples // batch_size`` (the
  remainder dropped), ``num_steps`` or ``round(num_epochs × steps_per_epoch)`` (at least 1) in
  all, and ``round(optimizer.warmup_epochs × steps_per_epoch)`` of warm-up."""
  per_epoch = data.steps_per_epoch(examples_per_epoch, config.batch_size)
  if config.num_steps > 0:
    total = int(config.num_steps)
  else:  # num_epochs > 0: checked by check_config
    total = max(1, round(config.num_epochs * per_epoch))
  warmup = round(float(config.optimizer.warmup_epochs) * per_epoch)
  return StepPlan(steps_per_epoch=per_epoch, total_steps=total, warmup_steps=warmup)


def read_plan(run_dir: str) -> StepPlan | None:
  """The ``plan.json`` of a run directory, or None when it has none (or an unreadable one)."""
  try:
    with open(os.path.join(run_dir, PLAN_FILE)) as f:
      return StepPlan(**{k: int(v) for k, v in json.load(f).items()})
  except (OSError, ValueError, TypeError, AttributeError):  # absent, torn, or not a plan
    return None
