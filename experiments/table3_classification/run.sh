#!/usr/bin/env bash
# Table III (ours on nine classifiers; W4A4 and W3A3).
# PRESET=smoke|proxy|proxy-gpu|paper (default proxy), SEEDS="0 1 2", DEVICE=auto|cpu|cuda, MODELS=a,b, JOBS=n,
# WANDB_MODE (default offline). Finished runs are skipped, killed runs resume. Ends by writing the table.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
source scripts/setup.sh || exit 1
python -m qat.experiments experiments/table3_classification/config.yaml "$@"
status=$?
python tables/make_table3.py || exit 1
exit $status
