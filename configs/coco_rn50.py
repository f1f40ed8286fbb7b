r"""The paper's full setup (MATH.md §5.1): CLIP RN50 + text Transformer on MSCOCO captions.

For users with accelerators and the official COCO 2017 files (no TensorFlow needed), with
Karpathy's ``dataset_coco.json`` in the root for the standard 5k test split:

  python -m experiments.main --config configs/coco_rn50.py:ts=S3 --workdir runs/coco_ts_s3 \
      --config.dataset.path=/data/coco

Training uses CLIP's random-resized crop (area share in [0.9, 1], aspect in [3/4, 4/3]) of
images stored at 256 px short side; evaluation their 224 px centre crop. A prepared TFDS
``coco_captions`` (needs TensorFlow) also works: ``--config.dataset.name=coco_captions``.

Batch 1024 over all local devices, 100 epochs with 20 warm-up epochs, 224 px, CLIP's AdamW
(β₂ = 0.98, ε = 1e−6, weight decay 0.2 on weight matrices). The paper does not report the
learning rate; 5e-4 is CLIP's RN50 value [C]. The method argument works as in default.py.
"""

import ml_collections

from configs import default
from modgap_jax.models import rn50_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config(arg)
  config.dataset.name = "coco_raw"
  config.dataset.path = ""  # the COCO root; set it on the command line
  config.dataset.store_size = 256  # stored short side: room for 224 px crops
  config.dataset.train_split = "train+restval"  # Karpathy's 113k training images
  config.dataset.eval_split = "test"  # Karpathy's 5k test images
  config.dataset.zero_shot_label = ""  # COCO has no class labels; zero-shot is on CIFAR-10 in the paper
  config.dataset.on_device = "no"  # streamed: decoded per batch by grain workers
  config.dataset.crop_scale = (0.9, 1.0)  # CLIP's random-resized crop
  config.dataset.crop_ratio = (3 / 4, 4 / 3)

  config.model = rn50_config()
  config.model.vocab_size = 49408  # CLIP's vocabulary size, as the BPE budget
  config.model.resnet.norm = "batch"
  config.model.resnet.axis_name = "batch"  # BatchNorm statistics over the global batch
  config.model.dtype = "bfloat16"

  config.batch_size = 1024
  config.num_epochs = 100.0
  config.optimizer.learning_rate = 5e-4
  config.optimizer.warmup_epochs = 20.0
  config.optimizer.weight_decay = 0.2
  config.eval_every = 2000
  config.checkpoint_every = 1000
  config.eval.linear_probe = False
  config.eval.zero_shot = False
  return config
