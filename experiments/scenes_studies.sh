#!/usr/bin/env bash
# The scenes study, every table and figure, resumable: run it again and it goes on where it
# stopped (finished runs are skipped, the others resume from their checkpoints).
#
#   nohup bash experiments/scenes_studies.sh > scenes_studies.log 2>&1 &
#
# Order, so that a study stopped early has the most to say: seed 0 of every Table 2 cell;
# seeds 1-2 of the cells whose targets need a seed spread (baseline, FLT tau = 0.04, TS S3);
# seed 0 of Fig. 4a and Table 3; Fig. 4b (one set of batches, 100 initialisations: minutes);
# seeds 1-2 of the other Table 2 cells; seed 0 of the imbalance sweep; seeds 1-2 of Table 3,
# Fig. 4a and the sweep.
# Outputs: experiments/results/scenes/<study>/.
set -u
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
stopped=0
trap 'stopped=1' TERM INT

study() {  # study <name> <seeds> [cells flag]
  [ "$stopped" = 1 ] && exit 0
  "$python" -m experiments.main --config "configs/study.py:$1,scenes" --config.seeds=$2 "${@:3}" \
    --config.progress_bar=False --workdir "experiments/results/scenes/$1" || exit $?
}

study table2 1
study table2 3 "--config.cells=('baseline','flt=0.04','ts=S3')"
study fig4a 1
study table3 1
[ "$stopped" = 1 ] && exit 0
"$python" -m experiments.main --config configs/study.py:fig4b,scenes --config.progress_bar=False \
  --workdir experiments/results/scenes/fig4b || exit $?
study table2 3
study imbalance 1
for name in table3 fig4a imbalance; do
  study "$name" 3
done
