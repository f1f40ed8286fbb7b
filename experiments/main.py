"""Entry point: ``python -m experiments.main --config configs/<x>.py[:arg] --workdir runs/<name>``.

Flags go to a config; ``config.task`` picks the job. Bad input of any kind ends with a
one-line ``error: ...`` on stderr and exit code 2.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from modgap_jax.errors import ConfigError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file, optionally ':arg'.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, report and figures.")
flags.mark_flags_as_required(["config", "workdir"])

TASKS = ("train", "dynamics")


def run_task(config, workdir: str) -> None:
  """Dispatches on ``config.task``; the task modules are imported lazily so --help stays fast."""
  task = config.get("task", None)
  if task == "train":
    from modgap_jax import train
    train.train_and_evaluate(config, workdir)
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
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def cli() -> None:
  """Runs main, turning a bad --config file (absl's own parse errors) into a one-line exit 2."""
  try:
    app.run(main)
  except flags.Error as e:  # raised before main() when the config file or an override is bad
    print(f"error: {e}".splitlines()[0], file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  cli()
