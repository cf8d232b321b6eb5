#!/usr/bin/env bash
# The test suite: sets itself up (venv, pinned requirements, Fashion-MNIST), then runs pytest.
# Default: the fast suite (tests marked `slow` are skipped). `bash scripts/test.sh -m ""` runs everything.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TQDM_DISABLE=1 WANDB_SILENT=true
STATE="$(mktemp -d)"
trap 'rm -rf "$STATE"' EXIT
require_free_gb "$STATE" 1 "the test suite (its runs, checkpoints and W&B logs)"
# Tests never touch the repository's runs/ or checkpoints/ nor the home directory.
export QAT_RUNS="$STATE/runs" QAT_CHECKPOINTS="$STATE/checkpoints" WANDB_DIR="$STATE/wandb" \
       WANDB_CACHE_DIR="$STATE/wandb-cache" WANDB_CONFIG_DIR="$STATE/wandb-config" WANDB_DATA_DIR="$STATE/wandb-data" \
       YOLO_CONFIG_DIR="$STATE/ultralytics" MPLCONFIGDIR="$STATE/mpl" TORCHINDUCTOR_CACHE_DIR="$STATE/inductor"
if [[ $# -eq 0 ]]; then set -- -m "not slow"; fi
# Test directories live under $STATE too, and a passed test's is deleted when it ends: the suite's runs and
# checkpoints would otherwise pile up in /tmp (about 1.7 GB per session, three sessions kept by pytest).
# No `exec`: the EXIT trap must run after pytest.
python -m pytest -q -p no:cacheprovider --basetemp="$STATE/pytest" -o tmp_path_retention_policy=failed \
    --durations=15 tests "$@"
