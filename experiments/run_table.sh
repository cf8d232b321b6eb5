#!/usr/bin/env bash
# Shared body of every table's run.sh: launch the table's runs, then write the table (not when the launcher
# was killed).
# Usage (from a run.sh): exec bash experiments/run_table.sh <experiment dir> <table number> "$@"
# PRESET=smoke|proxy|proxy-long|proxy-gpu|paper (default proxy), SEEDS="0 1 2", DEVICE=auto|cpu|cuda, MODELS=a,b,
# RECIPES=a,b, BITS=3, JOBS=n, WANDB_MODE (default offline). Finished runs are skipped, killed runs resume.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup.sh || exit 1
experiment="$1" table="$2"
shift 2
python -m experiments.launch "experiments/$experiment/config.yaml" "$@"
status=$?
# Exit 2: the launcher refused its input (config, SEEDS, ...) and ran nothing; the table stays as it was.
(( status == 2 )) && exit 2
if [ "$status" -gt 128 ]; then  # the launcher was killed (its runs with it): no table from a half-done launch
    echo "the launcher was stopped (exit $status): no table written; run again to resume" >&2
    exit "$status"
fi
# The table of the preset launched ($PRESET or a --preset argument), into tables/out/<preset>/.
preset="${PRESET:-proxy}" args=("$@")
for i in "${!args[@]}"; do
  case "${args[i]}" in --preset) preset="${args[i+1]:-$preset}" ;; --preset=*) preset="${args[i]#--preset=}" ;; esac
done
python "tables/make_table$table.py" --preset "$preset" || exit 1
exit $status
