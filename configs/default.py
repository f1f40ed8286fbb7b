r"""CLIP from scratch on Twemoji captions: the paper's baseline, small enough for 2 CPU cores.

Run (about 5 minutes on 2 CPU cores, first run included, which builds the dataset):

  python -m experiments.main --config configs/default.py --workdir runs/default

Pick a mitigation of MATH.md §4 with the config argument (see modgap_jax/methods.py):

  --config configs/default.py:flt=0.04     fixed τ
  --config configs/default.py:ts=S3        τ scheduled 0.01 → 0.05
  --config configs/default.py:tr=softplus  (or tr=exp_scaled, tr=exp_scaled:4)
  --config configs/default.py:slrt         ν's learning rate × 0.1
  --config configs/default.py:hs=1e-3      hard swap; ss=5e-2 soft swap

and override any field, e.g. ``--config.num_epochs=3 --config.batch_size=128``.
"""

import ml_collections

from modgap_jax import methods
from modgap_jax.data.scenes import config as scenes_config
from modgap_jax.models import default_model_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "train"
  config.method = "baseline"
  config.seed = 0

  config.dataset = ml_collections.ConfigDict(
    dict(
      name="twemoji_captions",
      data_dir="",  # empty: $TFDS_DATA_DIR, else ~/.cache/modgap_jax/tensorflow_datasets
      # Datasets from your files (name='coco_raw' or 'image_text_folder'): the folder they read.
      # coco_raw: a COCO root (annotations/captions_{train,val}2017.json, train2017/, val2017/);
      # image_text_folder: a folder with captions.jsonl. Built once per (path, options) into data_dir.
      path="",
      store_size=256,  # short side of images stored at build time (never upscaled); 0 = as they are
      karpathy_split="",  # coco_raw: dataset_coco.json; '' = look in path and path/annotations
      test_fraction=0.1,  # image_text_folder without 'split' fields: share of images in 'test'
      split_seed=0,  # ... and which images those are (a SHA-256 hash of seed and image path)
      train_split="train",
      # '' = the dataset's default: 'test'; coco_raw: Karpathy's 'test' when dataset_coco.json is
      # found, else 'val' (one line says which). A named split the data lacks is an error.
      eval_split="",
      zero_shot_label="subcategory",  # a label feature ('label' for image_text_folder); '' = no zero-shot
      tokenizer="bpe",  # BPE trained on the train captions ('byte' for raw UTF-8 bytes; 'clip': CLIP's own)
      vocab_file="",  # tokenizer='clip': CLIP's bpe_simple_vocab_16e6.txt.gz (ships with open_clip)
      # CLIP's RGB normalisation.
      mean=(0.48145466, 0.4578275, 0.40821073),
      std=(0.26862954, 0.26130258, 0.27577711),
      # 'auto': a split that fits (see data_modes.RESIDENT_LIMIT_BYTES) lives on the devices and the
      # step draws its own batches there; 'no' streams host batches (large data sets).
      on_device="auto",
      mismatch_fraction=0.0,  # share of training images paired with another image's captions
      augment_min_scale=1.0,  # random crops of scale [min, 1], on device; 1.0 = none
      # Streamed splits only: CLIP's random-resized crop of the stored image, area share drawn in
      # crop_scale and aspect (w/h) log-uniformly in crop_ratio; () = off (centre crops).
      crop_scale=(),
      crop_ratio=(3 / 4, 4 / 3),
      # Streamed splits only: grain worker processes that read and resize batches; -1 = auto
      # (one per core up to 8 for a lazily read split, none for one in memory).
      num_workers=-1,
    )
  )
  # name='scenes': the world generated on the devices (modgap_jax/data/scenes/config.py;
  # configs/scenes.py is its regime). Needs tokenizer='words' for the unbounded stream.
  config.dataset.scenes = scenes_config.default_config()

  # Start from a pretrained open_clip / OpenAI checkpoint you downloaded (docs/pretrained.md): its
  # .safetensors file, or the directory holding it. Its config then replaces model.* (all but
  # dtype and resnet.axis_name) and dataset.mean/std; '' = random initialisation.
  config.init_from = ""
  config.pretrained_config = ""  # its open_clip config: a bundled name or a JSON; '' = the one beside it

  config.model = default_model_config()
  config.model.image_size = 32
  config.model.embed_dim = 128
  config.model.resnet.layers = (1, 1, 1, 1)
  config.model.resnet.width = 16
  config.model.resnet.heads = 4
  config.model.text.width = 128
  config.model.text.depth = 2
  config.model.text.heads = 4
  config.model.context_length = 32
  config.model.vocab_size = 2048  # also the BPE vocabulary budget

  config.batch_size = 128  # global, split over all local devices
  config.num_epochs = 30.0
  config.num_steps = -1  # > 0 overrides num_epochs

  config.optimizer = ml_collections.ConfigDict(
    dict(learning_rate=5e-4, warmup_epochs=2.0, b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1, grad_clip_norm=0.0)
  )
  config.temperature = methods.temperature_defaults()
  config.swap = methods.swap_defaults()

  # Train steps per device call (a lax.scan; logs stay per step). 0 = auto: 1 on CPU, where a
  # dispatch costs little and a scanned step runs slower, 10 on accelerators.
  config.steps_per_dispatch = 0
  # A step whose loss, gradient norm or parameters are not finite: 'stop' ends the run there
  # (exit 3, the last good checkpoint intact); 'skip' drops that update and counts it.
  config.nonfinite = "stop"
  config.log_every = 10
  config.eval_every = 250  # steps; the last step is always evaluated
  config.checkpoint_every = 100
  config.keep_checkpoints = 3
  config.eval = ml_collections.ConfigDict(
    dict(gap_pairs=512, linear_probe=True, probe_l2=1e-3, probe_steps=300, zero_shot=True, batch_size=512)
  )
  config.progress_bar = True
  config.tensorboard = True  # event files (scalars, the PCA figure) in the workdir, via tensorboardX

  methods.apply_method(config, arg or "baseline")
  return config
