"""modgap_jax.quiet: a first run shows our lines, not third-party warnings; --verbose brings them back."""

import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from modgap_jax import quiet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSL_LINE = re.compile(r"^[IWEF]\d{4} |^(INFO|WARNING|ERROR):")  # absl's and Python's logging formats
NOISE = ("Using custom data configuration", "OpenCV is not installed", "Downloading and preparing", "dataset_info.json")


def _record(pathname: str, level: int) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_filter_drops_third_party_warnings_only():
  site = os.path.join("venv", "lib", "python3.11", "site-packages")
  tfds_file = os.path.join(site, "tensorflow_datasets", "core", "dataset_builder.py")
  third_party = quiet.ThirdPartyFilter()
  assert not third_party.filter(_record(tfds_file, logging.WARNING))
  assert not third_party.filter(_record(os.path.join(site, "orbax", "checkpoint", "x.py"), logging.INFO))
  assert third_party.filter(_record(tfds_file, logging.ERROR))  # Errors always reach the user.
  assert third_party.filter(_record(os.path.join(site, "jax", "_src", "xla_bridge.py"), logging.WARNING))
  assert third_party.filter(_record(os.path.join(REPO, "modgap_jax", "train.py"), logging.WARNING))
  assert not quiet.from_quiet_package(os.path.join("somewhere", "grain.py"))  # A file named so is not the package.


def _write_folder(root) -> None:
  """20 solid squares, red or blue, each with one caption and a label; every fifth one in 'test'."""
  root.mkdir()
  lines = []
  for i in range(20):
    colour, name = ((200, 20, 20), "red") if i % 2 else ((20, 20, 200), "blue")
    Image.fromarray(np.full((12, 12, 3), colour, np.uint8)).save(root / f"{i}.png")
    split = "test" if i % 5 == 0 else "train"
    lines.append(json.dumps({"image": f"{i}.png", "caption": f"a {name} square", "label": name, "split": split}))
  (root / "captions.jsonl").write_text("\n".join(lines) + "\n")


# Config fields of a folder run small enough to build, compile, train and evaluate in seconds.
TINY_FOLDER_RUN = {
  "dataset.name": "image_text_folder",
  "dataset.zero_shot_label": "label",
  "dataset.on_device": "no",  # grain workers too: they make their own data sources
  "dataset.num_workers": 1,
  "num_steps": 2,
  "eval_every": 2,
  "batch_size": 8,
  "model.image_size": 8,
  "model.resnet.layers": "(1, 1)",
  "model.resnet.width": 8,
  "model.text.width": 16,
  "model.text.depth": 1,
  "model.text.heads": 2,
  "model.vocab_size": 300,
  "eval.linear_probe": False,
  "progress_bar": False,
}


def _run(folder, data_dir, workdir, *extra):
  fields = {**TINY_FOLDER_RUN, "dataset.path": folder, "dataset.data_dir": data_dir}
  flags = [f"--config.{name}={value}" for name, value in fields.items()]
  cmd = [
    sys.executable,
    "-m",
    "experiments.main",
    "--config=configs/default.py",
    f"--workdir={workdir}",
    *flags,
    *extra,
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _lines(output: str) -> list[str]:
  """The lines a terminal would keep: tqdm's redrawn bars (split on \\r, leave=False) are dropped."""
  parts = (p.strip() for line in output.splitlines() for p in line.split("\r"))
  return [p for p in parts if p and not p.startswith("preparing images")]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  """A first run on a new folder: it builds the dataset, trains 2 steps and evaluates."""
  tmp = tmp_path_factory.mktemp("quiet")
  folder, data_dir = tmp / "pets", tmp / "tfds"
  _write_folder(folder)
  return folder, data_dir, _run(folder, data_dir, tmp / "run")


def test_first_folder_run_prints_only_our_line(first_run):
  done = first_run[2]
  assert done.returncode == 0, done.stderr
  lines = _lines(done.stdout + done.stderr)
  assert len(lines) == 1 and lines[0].startswith("building dataset image_text_folder into "), lines
  assert not any(ABSL_LINE.match(line) or any(n in line for n in NOISE) for line in lines)


@pytest.mark.parametrize("loud_flag", ["--verbose", "--verbosity=0"])
def test_verbose_or_absl_verbosity_brings_the_warnings_back(first_run, tmp_path, loud_flag):
  folder, data_dir, _ = first_run
  # A batch larger than the split stops the run right after its data is loaded (exit 2).
  loud = _run(folder, data_dir, tmp_path / "loud", loud_flag, "--config.batch_size=1000")
  assert loud.returncode == 2, loud.stderr
  assert "Using custom data configuration" in loud.stderr and "OpenCV is not installed" in loud.stderr
  assert loud.stderr.strip().splitlines()[-1].startswith("error: batch_size=1000 exceeds the 16 examples")
