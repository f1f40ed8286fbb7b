r"""The paper's experiments as resumable studies on the shared regime (``configs/regime.py``).

  python -m experiments.main --config configs/study.py:table2 --workdir experiments/results/table2
  python -m experiments.main --config configs/study.py:table3 --workdir experiments/results/table3
  python -m experiments.main --config configs/study.py:fig4a  --workdir experiments/results/fig4a
  python -m experiments.main --config configs/study.py:fig4b  --workdir experiments/results/fig4b

On the scenes world (``configs/scenes.py`` as the base), add ``,scenes`` to the study:

  python -m experiments.main --config configs/study.py:table2,scenes --workdir experiments/results/scenes/table2
  python -m experiments.main --config configs/study.py:imbalance --workdir experiments/results/scenes/imbalance

- ``imbalance`` (scenes only, beyond the paper): caption detail 1, 0.75, 0.5, 0.25 (each
  attribute of each object named with that probability) × {learned τ, FLT τ = 0.04}.

- ``table2``: Table 2's columns, baseline, ``flt=0.04``, ``ts=S3``, ``tr=softplus``, ``slrt``,
  ``hs=0.0115``, ``ss=5e-2``. The HS cell keeps the paper's expected number of swapped steps
  (p = 1e-3 × ~11 500 steps = 11.5) over our 1 000 steps; p = 1e-3 would expect one swap.
- ``table3``: ``flt=τ`` for τ ∈ {0.01, 0.02, 0.04, 0.07, 0.1, 0.2, 0.4} (Table 3) and the full
  hard swap ``hs=1.0``.
- ``fig4a``: one baseline cell evaluated every 25 steps: 40 eval points over the regime's
  1 000 steps, 36 of them after its 100-step warm-up, for the Theorem 3.2 fit of Δ(t) against
  −1/log²t (eval cost ~8 s each on 2 CPU cores, so about 5 minutes per seed on top of training).
- ``fig4b``: Theorem 3.3, ``num_inits`` random initialisations × ``num_steps`` steps (see
  ``modgap_jax.study.fig4b``).

Every cell × seed is ``<base_config>:<cell>`` with ``seed = k`` and ``base_overrides`` applied,
trained into ``<workdir>/<cell>/seed<k>/``. Running the command again skips finished runs and
resumes the others. Useful flags::

  --config.seeds=5                                       seeds 0..4 (3 by default)
  --config.cells='("baseline","flt=0.04")'               a subset of cells (empty: the study's)
  --config.base_overrides="{'num_steps': 500, 'dataset': {'name': 'digits_captions'}}"
                                                         fields set in every cell
  --config.num_inits=20 --config.num_steps=5             fig4b's grid

``base_overrides`` is a dict of dotted field → value (nested dicts are read as dotted paths);
each cell's recorded command repeats it as ``--config.<field>=<value>`` flags.
"""

import ml_collections

from modgap_jax import study as study_lib
from modgap_jax.errors import check_choice

REGIMES = {"twemoji": "configs/regime.py", "scenes": "configs/scenes.py"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  name, _, regime = (arg or "table2").partition(",")
  config = ml_collections.ConfigDict()
  config.task = "study"
  config.study = check_choice("study", name, tuple(study_lib.STUDIES))
  # The imbalance sweep varies the scenes world's captions: it exists only there.
  regime = check_choice("study regime", regime or ("scenes" if name == "imbalance" else "twemoji"), tuple(REGIMES))
  if name == "imbalance" and regime != "scenes":
    check_choice("study regime of imbalance", regime, ("scenes",))
  config.method = f"study:{config.study}" + (f",{regime}" if regime != "twemoji" else "")
  config.seeds = 3
  config.cells = ()  # empty: the study's own cells (modgap_jax.study.paper.STUDIES)
  config.base_config = REGIMES[regime]
  config.base_overrides = {}
  config.progress_bar = True
  # fig4a: fit over eval steps t > fig4a_min_step; -1: the run's learning-rate warm-up.
  config.fig4a_min_step = -1
  # fig4b (Theorem 3.3): inits, steps each, inits per vmap, and the towers' learning rate
  # (0: the regime's peak, constant; > 0: this rate, constant; < 0: the regime's schedule
  # with its warm-up, which gives the first 10 steps at most 9 % of the peak).
  config.num_inits = 100
  config.num_steps = 10
  config.fig4b_chunk = 10
  config.fig4b_lr = 0.0
  if regime == "scenes":
    _scenes_study(config)
  elif config.study == "fig4a":
    # >= 20 eval points after the warm-up: every 25 steps of 1 000 gives 36.
    config.base_overrides = {"eval_every": 25}
  if config.study == "fig4b":
    config.seeds = 1  # one set of batches and pairs; the inits are the repeats
  return config


def _scenes_study(config: ml_collections.ConfigDict) -> None:
  """The scenes regime's version of a study: its HS cell and Fig. 4a's evaluation grid."""
  from configs import scenes

  if config.study == "table2":
    # HS keeps the paper's expected number of swapped steps (p = 1e-3 × ~11 500 = 11.5) over
    # the regime's steps, as the Twemoji study's hs=0.0115 does over its 1 000.
    hs = f"hs={study_lib.HS_PAPER_P * study_lib.PAPER_STEPS / scenes.NUM_STEPS:.3g}"
    config.cells = tuple(hs if c.startswith("hs=") else c for c in study_lib.STUDIES["table2"])
  if config.study == "fig4a":
    # >= 20 eval points after the warm-up.
    config.base_overrides = {"eval_every": scenes.NUM_STEPS // 30}
