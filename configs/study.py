r"""The paper's study: a resumable grid of training runs on the shared regime.

  python -m experiments.main --config configs/study.py:table2 --workdir experiments/results/table2
  python -m experiments.main --config configs/study.py:table3 --workdir experiments/results/table3
  python -m experiments.main --config configs/study.py:fig4a  --workdir experiments/results/fig4a

Every cell is ``configs/regime.py:<cell>`` (see its docstring for why the regime is what it
is) with ``seed = k``, in ``<workdir>/<cell>/seed<k>/``. Running the command again skips
finished runs and resumes the others. ``--config.seeds=N`` sets the seeds (3 by default),
``--config.cells='("baseline","flt=0.04")'`` a subset, and ``base_overrides`` shrinks every
cell alike (for tests). Table 2's HS cell keeps the paper's expected number of swapped steps
(p = 1e-3 × ~11 500 steps = 11.5) over our 1 000 steps: p = 0.0115.

``fig4a`` is the baseline with an evaluation every 25 steps; its Δ(t) is fitted against
−1/log²t after ``fig4a_min_step`` (the warm-up, where the learning rate still rises).
"""

import ml_collections

from modgap_jax import study as study_lib
from modgap_jax.errors import check_choice


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "study"
  config.study = check_choice("study", arg or "table2", tuple(study_lib.STUDIES))
  config.method = f"study:{config.study}"
  config.seeds = 3
  config.cells = ()  # empty: the study's own cells (modgap_jax.study.STUDIES)
  config.base_config = "configs/regime.py"
  config.base_overrides = ()  # 'field=value' strings applied to every cell, as --config.field=value
  config.progress_bar = True
  config.fig4a_min_step = 100
  if config.study == "fig4a":
    config.base_overrides = ("eval_every=25",)
  return config
