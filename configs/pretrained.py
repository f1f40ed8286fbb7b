r"""A pretrained CLIP (open_clip or OpenAI weights you downloaded): measure its gap, fine-tune it, export it.

Nothing downloads at run time; docs/pretrained.md says where the weights and CLIP's
vocabulary file come from. With W = a directory holding ``open_clip_model.safetensors`` and
``open_clip_config.json`` (or a weight file, with ``--config.pretrained_config=ViT-B-32-quickgelu``
or another bundled name) and V = ``bpe_simple_vocab_16e6.txt.gz``:

  # 1. A checkpoint's modality gap on one split of any dataset: analysis.json, report.md, figures.
  python -m experiments.main --config configs/pretrained.py:measure --config.init_from=W \
    --config.dataset.vocab_file=V --config.dataset.name=twemoji_captions --workdir runs/measure

  # 2. Fine-tune it with a method of MATH.md §4 (any configs/default.py argument after the comma).
  python -m experiments.main --config configs/pretrained.py:finetune,flt=0.04 --config.init_from=W \
    --config.dataset.vocab_file=V --workdir runs/finetune

  # 3. Export a trained run as an open_clip checkpoint (open_clip.create_model('local-dir:...')).
  python -m experiments.main --config configs/pretrained.py:export --config.run_dir=runs/finetune \
    --workdir runs/finetune_open_clip

``init_from`` sets the model (every ``model.*`` field but ``dtype`` and ``resnet.axis_name``)
and ``dataset.mean``/``std`` from the checkpoint's config; see ``modgap_jax/pretrained/run.py``.
"""

import ml_collections

from configs import analyze, default
from modgap_jax.errors import ConfigError, check_choice

USES = ("measure", "finetune", "export")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  use, _, method = (arg or "").partition(",")
  check_choice("configs/pretrained.py argument", use, USES)
  if use == "export":
    if method:
      raise ConfigError(f"configs/pretrained.py:export takes no method (got {method!r})")
    return ml_collections.ConfigDict(dict(task="export", run_dir=""))

  config = default.get_config(method or "baseline")
  config.dataset.tokenizer = "clip"  # the ids a released text tower was trained on
  config.eval.batch_size = 128
  if use == "measure":
    if method:
      raise ConfigError(f"configs/pretrained.py:measure measures and takes no method (got {method!r})")
    config.task = "measure"
    # configs/analyze.py's fields; beta = 0: the checkpoint's own β = e^logit_scale.
    config.analysis = analyze.get_config()
    del config.analysis["task"], config.analysis["embeddings"]
    config.analysis.beta = 0.0
    return config

  # Fine-tuning: a small rate, a short warm-up and few epochs (a released model is a good start).
  config.optimizer.learning_rate = 1e-5
  config.optimizer.warmup_epochs = 0.5
  config.num_epochs = 5.0
  config.batch_size = 128
  config.model.resnet.axis_name = "batch"  # a ResNet's BatchNorm statistics over the global batch, as CLIP's
  return config
