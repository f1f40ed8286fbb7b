"""``python -m tests``: the whole suite, one pytest process per test module.

Why not one ``pytest`` process: after a few hundred XLA:CPU compilations in one process (jax
0.10.2), a later compilation crashed inside XLA (SIGSEGV or SIGABRT, seen three times, each time
in a different test that passes on its own). A fresh interpreter per module keeps every module's
compilations apart; it costs one JAX import per module. All modules share one compilation cache
and one build of the digits dataset (see conftest.py), so a program one module compiled is read
back by the next instead of being compiled again. Extra arguments go to every pytest call, e.g.
``python -m tests -x``.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time


def main(argv: list[str]) -> int:
  here = os.path.dirname(os.path.abspath(__file__))
  modules = sorted(glob.glob(os.path.join(here, "test_*.py")))
  made = []  # directories a caller chose are left alone
  for variable, prefix in (
    ("JAX_COMPILATION_CACHE_DIR", "modgap-jax-test-cache-"),
    ("MODGAP_TEST_DATA_DIR", "modgap-jax-test-data-"),  # conftest.py's digits_dir
  ):
    if variable not in os.environ:
      os.environ[variable] = tempfile.mkdtemp(prefix=prefix)
      made.append(os.environ[variable])
  failed = []
  start = time.time()
  try:
    for module in modules:
      began = time.time()
      code = subprocess.call([sys.executable, "-m", "pytest", "-q", *argv, module], cwd=os.path.dirname(here))
      name = os.path.basename(module)
      print(f"== {name}: exit {code} in {time.time() - began:.0f} s", flush=True)
      if code != 0:
        failed.append(name)
  finally:
    for directory in made:
      shutil.rmtree(directory, ignore_errors=True)
  print(
    f"== {len(modules) - len(failed)} of {len(modules)} test modules passed in {time.time() - start:.0f} s"
    + (f"; failed: {', '.join(failed)}" if failed else ""),
    flush=True,
  )
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
