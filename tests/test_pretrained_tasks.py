"""The three uses of a pretrained checkpoint through the entry point (configs/pretrained.py):
measure its gap, fine-tune it, export a run back to open_clip.

They run the tiny open_clip fixture models of tests/fixtures/pretrained/ (test_pretrained.py
checks those against open_clip) on the digits dataset, without torch. One of them, with its
text embedding table grown to CLIP's 49408 ids, reads CLIP's own tokenizer (the fixture's
vocabulary subset), as a released model does.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import pretrained as pretrained_configs
from experiments.main import run_task
from modgap_jax import data, models, pretrained, run_setup, train
from modgap_jax.data import text
from modgap_jax.errors import ConfigError
from modgap_jax.tasks import analyze_inputs
from modgap_jax.temperature import Reparam

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "pretrained")
VIT = os.path.join(FIXTURES, "vit_gelu")  # 32 px, patches of 8, context 16, logit scale 2.5
VOCAB = os.path.join(FIXTURES, "clip_vocab_subset.txt.gz")
LOGIT_SCALE = 2.5
FIGURES = ("pca.png", "sphere.png", "shift.png", "gap_spectrum.png", "cosine_hist.png")


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
  """vit_gelu with a token table for CLIP's 49408 ids (rows past its 200 drawn at random),
  written as open_clip publishes weights: a tiny model that reads CLIP's tokenizer."""
  loaded = pretrained.load(VIT)
  variables = jax.tree.map(np.array, loaded.variables)
  table = variables["params"]["text"]["token_embedding"]["embedding"]
  grown = np.random.default_rng(0).normal(scale=0.02, size=(text.bpe.CLIP_VOCAB_SIZE, table.shape[1]))
  grown = grown.astype(np.float32)
  grown[: len(table)] = table
  variables["params"]["text"]["token_embedding"]["embedding"] = grown
  cfg = loaded.model_config.copy_and_resolve_references()
  cfg.vocab_size = len(grown)
  directory = str(tmp_path_factory.mktemp("clip_model"))
  pretrained.export(directory, variables, cfg, preprocess=loaded.preprocess)
  return directory


def _digits(config, digits_dir):
  config.dataset.name = "digits_captions"
  config.dataset.data_dir = digits_dir
  config.dataset.zero_shot_label = "label"
  config.dataset.vocab_file = VOCAB
  config.eval.batch_size = 64
  config.progress_bar = False
  return config


def measure_config(digits_dir, init_from):
  config = _digits(pretrained_configs.get_config("measure"), digits_dir)
  config.init_from = init_from
  config.analysis.probe_steps = 20
  config.analysis.shift.num = 21
  config.analysis.progress_bar = False
  return config


def finetune_config(digits_dir, init_from, method="baseline", num_steps=2):
  config = _digits(pretrained_configs.get_config(f"finetune,{method}"), digits_dir)
  config.init_from = init_from
  config.batch_size = 16
  config.num_steps = num_steps
  config.optimizer.learning_rate = 1e-3  # large enough that two steps move every tower
  config.optimizer.warmup_epochs = 0.0
  config.log_every = config.eval_every = config.checkpoint_every = 1
  config.eval.probe_steps = 5
  config.tensorboard = False
  return config


def _split(digits_dir):
  return data.load_examples("digits_captions", "test", digits_dir)


def _embed(loaded_model, variables, images=None, tokens=None):
  """Our embeddings of raw uint8 images (normalised here, in NumPy, as CLIP does) or of token rows."""
  if images is not None:
    x = (images.astype(np.float32) / 255 - np.float32(pretrained.OPENAI_MEAN)) / np.float32(pretrained.OPENAI_STD)
    return np.asarray(loaded_model.apply(variables, x, method=models.CLIP.encode_image))
  return np.asarray(loaded_model.apply(variables, tokens, method=models.CLIP.encode_text))


# ----------------------------------------------------------------------------- measure


def test_measure_analyses_the_checkpoints_embeddings_of_a_split(tmp_path, digits_dir, clip_model):
  workdir = tmp_path / "measure"
  run_task(measure_config(digits_dir, clip_model), str(workdir))
  for name in ("analysis.json", "report.md", "embeddings.npz", *FIGURES):
    assert (workdir / name).is_file(), name
  result = json.loads((workdir / "analysis.json").read_text())
  emb = np.load(workdir / "embeddings.npz")

  # The embeddings are the checkpoint's, of the split's images and of its captions under CLIP's tokenizer.
  split = _split(digits_dir)
  loaded = pretrained.load(clip_model)
  assert emb["image_emb"].shape == (len(split), 16)
  np.testing.assert_allclose(
    emb["image_emb"][:8], _embed(loaded.model, loaded.variables, images=split.fetch(np.arange(8), 32)[0]), atol=2e-6
  )
  captions = [c for caps in split.captions() for c in caps]
  np.testing.assert_array_equal(emb["text_to_image"], np.repeat(np.arange(len(split)), 3))
  tokens = text.load_clip_tokenizer(VOCAB).encode(captions[:8], 16)
  assert tokens.max() == 49407  # CLIP's EOT: the ids are CLIP's
  np.testing.assert_allclose(emb["text_emb"][:8], _embed(loaded.model, loaded.variables, tokens=tokens), atol=2e-6)
  np.testing.assert_array_equal(emb["labels"], split.labels()["label"])
  assert emb["class_text_emb"].shape[0] == 10

  # The gap, recomputed in float64: Δ = ‖mean_i x_{t(i)} − mean_i y_i‖ over unit rows (MATH.md §2).
  x = emb["image_emb"].astype(np.float64)
  y = emb["text_emb"].astype(np.float64)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  y /= np.linalg.norm(y, axis=1, keepdims=True)
  gap = np.linalg.norm(x[emb["text_to_image"]].mean(0) - y.mean(0))
  assert result["gap"] == pytest.approx(gap, rel=1e-5)
  # β is the checkpoint's own: e^s.
  assert result["beta"] == pytest.approx(math.exp(LOGIT_SCALE), rel=1e-12)
  assert result["pretrained"]["logit_scale"] == LOGIT_SCALE
  assert (result["pretrained"]["split"], result["n_images"], result["n_texts"]) == ("test", len(split), len(captions))


# ----------------------------------------------------------------------------- fine-tune and export


def _train_logs(workdir):
  lines = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {line["step"]: line for line in lines if line["split"] == "train"}


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, digits_dir, clip_model):
  """A baseline run of two steps from the checkpoint, through the entry point."""
  workdir = str(tmp_path_factory.mktemp("finetune") / "run")
  run_task(finetune_config(digits_dir, clip_model), workdir)
  return workdir


def test_finetune_starts_from_the_checkpoint_with_nu_at_its_logit_scale(finetuned, digits_dir, clip_model):
  logs = _train_logs(finetuned)
  assert sorted(logs) == [1, 2]
  assert logs[1]["nu"] == LOGIT_SCALE  # ν of step 1's loss, before its update: the checkpoint's s
  assert logs[2]["nu"] != LOGIT_SCALE  # and learned from there
  # The initial state is the checkpoint's, its optimizer state made on it.
  run = run_setup.setup_run(finetune_config(digits_dir, clip_model), None)
  state = run.initial_state()
  loaded = pretrained.load(clip_model)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), loaded.variables["params"])
  assert int(state.step) == 0
  # The run's config records the checkpoint's model, which init_from put in place of the default.
  stored = json.load(open(os.path.join(finetuned, "config.json")))
  assert stored["model"] == json.loads(json.dumps(loaded.model_config.to_dict()))
  assert stored["init_from"] == clip_model
  # Training moved the towers away from the checkpoint.
  trained = analyze_inputs.restore_variables(finetuned)
  assert not np.array_equal(
    trained["params"]["image"]["patch_embedding"]["kernel"],
    loaded.variables["params"]["image"]["patch_embedding"]["kernel"],
  )


def test_finetune_with_flt_keeps_the_methods_temperature(tmp_path, digits_dir, clip_model):
  """flt fixes τ at its value, so ν stays at log(1/τ): the checkpoint gives the towers, not τ."""
  workdir = str(tmp_path / "flt")
  run_task(finetune_config(digits_dir, clip_model, "flt=0.2"), workdir)
  logs = _train_logs(workdir)
  nu = float(np.float32(Reparam().nu_from_tau(0.2)))
  assert logs[1]["nu"] == logs[2]["nu"] == pytest.approx(nu, rel=1e-7)
  assert logs[1]["beta"] == pytest.approx(5.0, rel=1e-6)
  first = analyze_inputs.restore_variables(workdir)["params"]["text"]
  assert not np.array_equal(
    first["token_embedding"]["embedding"],
    pretrained.load(clip_model).variables["params"]["text"]["token_embedding"]["embedding"],
  )


def test_finetune_under_another_reparam_starts_at_the_checkpoints_beta(digits_dir, clip_model):
  run = run_setup.setup_run(finetune_config(digits_dir, clip_model, "tr=softplus"), None)
  nu = float(run.initial_state().params["temperature"]["nu"])
  assert math.log1p(math.exp(nu)) == pytest.approx(math.exp(LOGIT_SCALE), rel=1e-6)  # β(ν₀) = e^s


def test_a_resnet_starts_with_the_checkpoints_batchnorm_statistics(digits_dir):
  rn = os.path.join(FIXTURES, "rn_quickgelu")
  config = finetune_config(digits_dir, rn)
  config.dataset.tokenizer = "words"  # the fixture's 300 ids
  run = run_setup.setup_run(config, None)
  assert run.config.model.resnet.axis_name == "batch"  # kept from the config: synced over the devices
  state = jax.device_get(run.initial_state())
  loaded = pretrained.load(rn)
  jax.tree.map(
    np.testing.assert_array_equal,
    (state.params, state.batch_stats),
    (loaded.variables["params"], loaded.variables["batch_stats"]),
  )


def test_a_resumed_finetune_restores_its_checkpoint_over_init_from(tmp_path, digits_dir, clip_model):
  """After the run, init_from's file is replaced by other weights of the same shapes: resuming
  the finished run reports the run's own state, not one trained from the new file."""
  start = tmp_path / "start"
  shutil.copytree(clip_model, start)
  config = finetune_config(digits_dir, str(start), num_steps=1)
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(config, workdir)
  loaded = pretrained.load(str(start))
  other = jax.tree.map(lambda v: np.asarray(v) * np.float32(0.5), loaded.variables)
  pretrained.export(str(start), other, loaded.model_config, preprocess=loaded.preprocess)
  again = train.train_and_evaluate(finetune_config(digits_dir, str(start), num_steps=1), workdir)
  assert again == first
  fresh = train.train_and_evaluate(finetune_config(digits_dir, str(start), num_steps=1), str(tmp_path / "fresh"))
  assert fresh["gap"] != first["gap"]  # the new file does start a new run elsewhere


def test_export_of_a_finetuned_run_loads_back_with_equal_embeddings(tmp_path, finetuned, digits_dir):
  out = tmp_path / "export"
  config = pretrained_configs.get_config("export")
  config.run_dir = finetuned
  run_task(config, str(out))
  assert sorted(os.listdir(out)) == ["open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json"]
  trained = analyze_inputs.restore_variables(finetuned)
  back = pretrained.load(str(out))
  jax.tree.map(np.testing.assert_array_equal, back.variables, jax.device_get(trained))
  assert back.logit_scale == float(trained["params"]["temperature"]["nu"])  # exp: s = ν
  # Equal embeddings from the run's own model and from the exported checkpoint.
  run_config = run_setup.read_run_config(finetuned)
  model = models.create_model(run_config.model, 0.0)
  split = _split(digits_dir)
  images = split.fetch(np.arange(8), 32)[0]
  tokens = text.from_json((out / "tokenizer.json").read_text()).encode([c[0] for c in split.captions()[:8]], 16)
  np.testing.assert_array_equal(
    _embed(back.model, back.variables, images=images), _embed(model, trained, images=images)
  )
  np.testing.assert_array_equal(
    _embed(back.model, back.variables, tokens=tokens), _embed(model, trained, tokens=tokens)
  )


# ----------------------------------------------------------------------------- bad input


def test_a_truncated_checkpoint_is_one_error_line_and_nothing_is_written(tmp_path, digits_dir):
  """Through `python -m experiments.main`, for measure and fine-tune: exit 2, one `error:` line
  naming the tensor the file cuts, and no workdir."""
  cut = tmp_path / "cut"
  cut.mkdir()
  shutil.copy(os.path.join(VIT, "open_clip_config.json"), cut)
  weights = open(os.path.join(VIT, "open_clip_model.safetensors"), "rb").read()
  (cut / "open_clip_model.safetensors").write_bytes(weights[: len(weights) // 2])
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "TFDS_DATA_DIR": digits_dir}
  flags = [
    f"--config.init_from={cut}",
    "--config.dataset.name=digits_captions",
    "--config.dataset.tokenizer=words",  # the fixture's 200 ids; CLIP's tokenizer needs 49408
    "--config.dataset.zero_shot_label=label",
  ]
  procs = {
    use: subprocess.Popen(
      [
        sys.executable,
        "-m",
        "experiments.main",
        f"--config=configs/pretrained.py:{use}",
        *flags,
        f"--workdir={tmp_path / use}",
      ],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for use in ("measure", "finetune")
  }
  for use, proc in procs.items():
    _, stderr = proc.communicate(timeout=600)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, stderr
    assert len(errors) == 1 and errors[0] == stderr.strip().splitlines()[-1], stderr
    assert "is truncated" in errors[0] and "tensor '" in errors[0], errors[0]
    assert not (tmp_path / use).exists()


def test_weights_that_do_not_fit_their_config_are_refused_before_anything_is_written(tmp_path, digits_dir):
  config = measure_config(digits_dir, os.path.join(FIXTURES, "vit_quickgelu", "open_clip_model.safetensors"))
  config.pretrained_config = VIT
  config.dataset.tokenizer = "words"
  with pytest.raises(ConfigError, match="'visual.class_embedding'") as error:
    run_task(config, str(tmp_path / "w"))
  assert "\n" not in str(error.value) and not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("init_from", "", "init_from is empty"),
    ("init_from", "/no/such/checkpoint", "init_from='/no/such/checkpoint': no such file"),
    ("pretrained_config", "ViT-B-99", "pretrained_config='ViT-B-99'"),
    ("dataset.vocab_file", "", "dataset.tokenizer='clip' needs CLIP's vocabulary file"),
  ],
)
def test_bad_pretrained_fields_are_named(tmp_path, digits_dir, clip_model, field, value, message):
  config = measure_config(digits_dir, clip_model)
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
    run_task(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_init_from_sets_the_model_and_normalisation_keeping_dtype(digits_dir):
  config = finetune_config(digits_dir, VIT)
  config.model.image_size, config.model.dtype = 64, "bfloat16"
  config.dataset.mean = (0.5, 0.5, 0.5)
  config.dataset.tokenizer = "words"
  run_setup.check_config(config)
  expected, preprocess = pretrained.to_model_config(VIT, "bfloat16")
  assert config.model.to_dict() == expected.to_dict() and config.model.image_size == 32
  assert tuple(config.dataset.mean) == preprocess["mean"] and tuple(config.dataset.std) == preprocess["std"]


def test_clip_tokenizer_is_read_from_the_vocabulary_file(digits_dir, clip_model):
  config = measure_config(digits_dir, clip_model)
  run_setup.check_config(config)
  tokenizer, saved = run_setup.load_tokenizer(config, _split(digits_dir), None)
  assert tokenizer == text.load_clip_tokenizer(VOCAB) and not saved
  # A text tower with fewer ids than CLIP's is refused, naming the field.
  small = measure_config(digits_dir, VIT)
  run_setup.check_config(small)
  with pytest.raises(ConfigError, match="model.vocab_size=200 is smaller than the clip tokenizer's 49408"):
    run_setup.load_tokenizer(small, _split(digits_dir), None)


def test_export_refuses_a_model_open_clip_lacks_before_writing(tmp_path):
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  from configs import default

  (run_dir / "config.json").write_text(json.dumps(default.get_config().to_dict()))  # a GroupNorm ResNet
  config = pretrained_configs.get_config("export")
  config.run_dir = str(run_dir)
  with pytest.raises(ConfigError, match="model.resnet.norm='group' has no open_clip counterpart"):
    run_task(config, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
