r"""Measure the modality gap of embeddings from anywhere (``config.task = 'analyze'``).

Run:

    python -m experiments.main --config configs/analyze.py --config.embeddings=emb.npz --workdir runs/analyze
    python -m experiments.main --config configs/analyze.py --config.embeddings=runs/baseline --workdir W
    python -m experiments.main --config configs/analyze.py --config.embeddings=a.npz,b.npz,c.npz --workdir W

``embeddings`` is an ``.npz`` (``image_emb`` [N, d], ``text_emb`` [M, d], optional
``text_to_image`` [M], ``labels`` [N], ``class_text_emb`` [C, d] or [C, T, d]), a directory
holding ``embeddings.npz``, or a modgap_jax training workdir (its latest checkpoint embeds its
eval split). A comma-separated list is compare mode: one table (``compare.md``,
``compare.json``) and one side-by-side figure (``compare.png``). One input writes
``analysis.json``, ``report.md`` and five figures. See ``modgap_jax/tasks/analyze.py``.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
  config = ConfigDict()
  config.task = "analyze"
  config.embeddings = ""  # FILE.npz | run directory | A,B,... (compare mode)
  config.beta = 100.0  # inverse temperature of the CLIP loss (CLIP's cap)
  config.seed = 0  # the gap_512 sample, histogram samples and probe splits
  # The gap-shift grid: num points over [low, high]; odd num over [−1, 1] puts 0 and ±1 on it.
  config.shift = ConfigDict(dict(num=41, low=-1.0, high=1.0))
  config.chunk_size = 1024  # query rows per block of every similarity computation
  config.hist_bins = 100  # cosine histograms over [−1, 1]
  config.hist_max_rows = 10000  # rows per modality in the histograms (seeded sample); <= 0: all
  config.gap_pairs = 512  # MATH.md §2: Δ on 512 random pairs
  # Logistic probes (labels and image-vs-text): penalty (l2/2)‖W‖² on the mean CE, L-BFGS steps.
  config.probe_l2 = 1e-3
  config.probe_steps = 300
  config.figures = ConfigDict(dict(max_pairs=300))  # pairs drawn in the PCA and sphere figures
  config.progress_bar = True
  return config
