"""The house style (pyproject.toml's [tool.ruff]): formatted, and clean under the linter."""

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ruff(*args):
  executable = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
  if executable is None:
    pytest.fail("ruff is not installed; it comes with the dev extra: pip install -e '.[dev]'")
  return subprocess.run([executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_code_is_formatted():
  done = ruff("format", "--check", ".")
  assert done.returncode == 0, done.stdout + done.stderr


def test_linter_is_clean():
  done = ruff("check", ".")
  assert done.returncode == 0, done.stdout + done.stderr
