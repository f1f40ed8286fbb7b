"""Entry point: ``python -m experiments.main --config configs/<x>.py[:arg] --workdir runs/<name>``.

Flags go to a config; ``config.task`` picks the job. Exit codes:

- 0: done, or stopped by SIGTERM/SIGINT after saving a checkpoint (the line says how to resume);
- 2: bad input of any kind (config file, field, workdir, data), one ``error: ...`` line on
  stderr, and nothing written;
- 3: a training step went non-finite (``config.nonfinite='stop'``), one ``error: ...`` line;
- 4: a file of the run could not be written (disk or quota full, permission denied, read-only
  or vanished workdir): one ``error: ...`` line with the step, the cause, the last complete
  checkpoint and the command that resumes once the cause is fixed.
"""

import importlib
import importlib.util
import os
import shlex
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from modgap_jax import quiet
from modgap_jax.errors import ConfigError, NonFiniteError, Preempted, StorageError
from modgap_jax.tasks import TASKS

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file, optionally ':arg'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, report and figures.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (jax.distributed).")
flags.DEFINE_integer("num_processes", None, "Multi-host: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index in [0, num_processes).")
flags.DEFINE_boolean("verbose", False, "Also show the third-party warnings that modgap_jax.quiet hides.")


def cluster_detected(environ=os.environ) -> bool:
  """Whether jax.distributed.initialize() can configure itself here: SLURM or Open MPI with
  more than one task, a Cloud TPU pod, or an explicit JAX_COORDINATOR_ADDRESS."""
  if int(environ.get("SLURM_NTASKS", "1")) > 1 or int(environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  return "TPU_WORKER_HOSTNAMES" in environ or "JAX_COORDINATOR_ADDRESS" in environ


flags.mark_flags_as_required(["config", "workdir"])


def run_task(config, workdir: str) -> None:
  """Calls the ``run(config, workdir)`` of the library task ``config.task`` names (imported lazily,
  so that --help stays fast)."""
  task = config.get("task", None)
  if task not in TASKS:
    raise ConfigError(f"config.task={task!r} is not valid; choose one of {', '.join(map(repr, TASKS))}")
  importlib.import_module(TASKS[task]).run(config, workdir)


def init_distributed(coordinator_address, num_processes, process_id) -> None:
  """Joins a multi-process run through ``jax.distributed`` when there is one.

  With the three flags, uses them. Without, calls ``jax.distributed.initialize()`` when the
  environment is a cluster JAX detects itself (SLURM with more than one task, Open MPI,
  Cloud TPU), and otherwise runs as a single process. On CPU the cross-process collectives go
  through gloo.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ConfigError("--coordinator_address, --num_processes and --process_id go together; give all three")
  import jax

  if all(given):
    if not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id={process_id} must lie in [0, --num_processes={num_processes})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
  elif cluster_detected():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  quiet.configure(verbose=FLAGS.verbose, absl_verbosity_given=FLAGS["verbosity"].present)
  try:
    if not FLAGS.workdir.strip():
      raise ConfigError("--workdir is empty; give the directory the run writes into")
    init_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    run_task(FLAGS.config, FLAGS.workdir)
  except (ConfigError, OSError) as e:  # OSError: an unwritable workdir, a missing data path
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(NonFiniteError.EXIT_CODE)
  except Preempted as e:
    print(f"stopped: {e}; resume with: {_resume_command()}", file=sys.stderr)
    sys.exit(0)
  except StorageError as e:  # a write failed: full disk or quota, permissions, read-only or gone
    print(f"error: {e} and resume with: {_resume_command()}", file=sys.stderr)
    sys.exit(StorageError.EXIT_CODE)


def _resume_command() -> str:
  """This invocation's command line: what resumes the run from its last checkpoint."""
  return shlex.join(["python", "-m", "experiments.main", *sys.argv[1:]])


def _one_line(error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0] if lines else type(error).__name__


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _check_config_file(value: str) -> None:
  """Loads the --config file and calls its ``get_config`` once, so that the file's own
  failures (a syntax error, an exception in ``get_config``) are one line with file and line.

  config_flags would load it too, but it folds such failures into a flag error that carries
  the whole traceback as text.
  """
  path, has_arg, arg = value.partition(":")
  try:
    spec = importlib.util.spec_from_file_location("_modgap_config_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      _fail(f"--config={path!r} defines no get_config()")
    module.get_config(arg) if has_arg else module.get_config()
  except ConfigError as e:
    _fail(_one_line(e))
  except SyntaxError as e:
    _fail(f"{e.filename} line {e.lineno}: {type(e).__name__}: {e.msg}")
  except Exception as e:  # any other failure inside the config file: name its line
    frames = [f for f in traceback.extract_tb(e.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
    where = f"{path} line {frames[-1].lineno}" if frames else path
    _fail(f"{where}: {type(e).__name__}: {_one_line(e)}")


def _check_config_path(argv) -> None:
  """A missing --config file is named in one line (config_flags would defer and blur it)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    else:
      continue
    path = value.split(":", 1)[0]
    if not os.path.isfile(path):
      configs = sorted(f for f in os.listdir("configs") if f.endswith(".py")) if os.path.isdir("configs") else []
      _fail(
        f"--config={path!r}: no such file; choose one of "
        f"{', '.join('configs/' + f for f in configs) or 'a path to a config .py file'}"
      )
    _check_config_file(value)


def _parse_flags(argv):
  """absl's flag parsing, except that a bad flag or config file is one `error:` line, exit 2.

  app.run's default parser catches flags.Error itself (multi-line message, exit 1), so the
  handling has to live in the parser app.run is given.
  """
  _check_config_path(argv)
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # config_flags: an unknown --config.<field>
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    name = str(e.args[0] if e.args else e).strip("'\"")
    print(
      f"error: no such config field '{name}'; check {', '.join(overrides)} against the config file's fields",
      file=sys.stderr,
    )
    sys.exit(2)
  except flags.Error as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


def cli() -> None:
  """Runs main; a bad --config file or flag (absl's parse errors) ends in one line, exit 2."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
