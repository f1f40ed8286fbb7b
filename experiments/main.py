"""Entry point: ``python -m experiments.main --config configs/<x>.py[:arg] --workdir runs/<name>``.

Flags go to a config; ``config.task`` picks the job. Bad input of any kind ends with a
one-line ``error: ...`` on stderr and exit code 2.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from modgap_jax.errors import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file, optionally ':arg'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, report and figures.")
flags.mark_flags_as_required(["config", "workdir"])

TASKS = ("train", "dynamics", "study")


def run_task(config, workdir: str) -> None:
  """Dispatches on ``config.task``; the task modules are imported lazily so --help stays fast."""
  task = config.get("task", None)
  if task == "train":
    from modgap_jax import train
    train.train_and_evaluate(config, workdir)
  elif task == "study":
    from modgap_jax import study
    study.run_study(config, workdir)
  elif task == "dynamics":
    from experiments import dynamics_task
    dynamics_task.run(config, workdir)
  else:
    raise ConfigError(f"config.task={task!r} is not valid; choose one of {', '.join(map(repr, TASKS))}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  try:
    run_task(FLAGS.config, FLAGS.workdir)
  except (ConfigError, OSError) as e:  # OSError: config_flags defers "no such config file"
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


def _one_line(error: Exception) -> str:
  """The informative line of a flag error.

  ml_collections' config_flags embeds the config file's whole traceback in the message; its
  last line ("pkg.ConfigError: ...") names the real problem, so that line is kept.
  """
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if any(line.startswith("Traceback") for line in lines):
    return lines[-1].split(": ", 1)[-1]
  return lines[0] if lines else type(error).__name__


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
      print(f"error: --config={path!r}: no such file; choose one of "
            f"{', '.join('configs/' + f for f in configs) or 'a path to a config .py file'}", file=sys.stderr)
      sys.exit(2)


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
    print(f"error: no such config field '{name}'; check {', '.join(overrides)} against the config file's fields",
          file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


def cli() -> None:
  """Runs main; a bad --config file or flag (absl's parse errors) ends in one line, exit 2."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
