"""The jobs ``python -m experiments.main`` runs, each a ``run(config, workdir)`` in its own module.

``config.task`` names one of :data:`TASKS`; the entry point imports that module (lazily, so
that ``--help`` stays fast) and calls its ``run``:

- ``train`` (:mod:`.train`): train and evaluate one CLIP (``modgap_jax.train``);
- ``study`` (:mod:`.study`): a resumable study of the paper (``modgap_jax.study``);
- ``dynamics`` (:mod:`.dynamics`): integrate and verify the gradient-flow theory;
- ``analyze`` (:mod:`.analyze`): measure the modality gap of any embeddings, or of a run;
- ``measure`` (:mod:`.measure`): a pretrained checkpoint's modality gap on a dataset split;
- ``export`` (:mod:`.export`): a trained run's weights as an open_clip checkpoint.
"""

TASKS = {
  "train": "modgap_jax.tasks.train",
  "dynamics": "modgap_jax.tasks.dynamics",
  "study": "modgap_jax.tasks.study",
  "analyze": "modgap_jax.tasks.analyze",
  "measure": "modgap_jax.tasks.measure",
  "export": "modgap_jax.tasks.export",
}
