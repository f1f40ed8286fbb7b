"""modgap_jax: the modality gap of contrastive multimodal learning, in JAX.

Public modules: ``losses``, ``temperature``, ``swap``, ``metrics`` (pure, jittable math),
``dynamics`` (gradient-flow theory), ``models``, ``data`` and ``train``.
"""

__version__ = "0.1.0"
