#!/usr/bin/env bash
# The scenes study, every table and figure, resumable: run it again and it goes on where it
# stopped (finished runs are skipped, the others resume from their checkpoints).
#
#   nohup bash experiments/scenes_studies.sh > scenes_studies.log 2>&1 &
#
# Pass 1 trains seed 0 of every cell of every study, pass 2 adds seeds 1 and 2, so a study
# stopped early still covers every cell. Outputs: experiments/results/scenes/<study>/.
set -u
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
stopped=0
trap 'stopped=1' TERM INT
for seeds in 1 3; do
  for study in table2 table3 fig4a imbalance; do
    [ "$stopped" = 1 ] && exit 0
    "$python" -m experiments.main --config "configs/study.py:$study,scenes" --config.seeds=$seeds \
      --config.progress_bar=False --workdir "experiments/results/scenes/$study" || exit $?
  done
done
[ "$stopped" = 1 ] && exit 0
"$python" -m experiments.main --config configs/study.py:fig4b,scenes --config.progress_bar=False \
  --workdir experiments/results/scenes/fig4b
