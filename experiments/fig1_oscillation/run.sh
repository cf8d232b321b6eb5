#!/usr/bin/env bash
# Fig. 1 (oscillations in LSQ training) from Table I's runs: trains what Table I's config needs (runs are shared
# with experiments/table1_freeze: a finished run is skipped), then draws one figure per model of
# experiments/fig1_oscillation/config.yaml with analysis/fig1.py into analysis/out/fig1_<preset>_<model>.{png,pdf}
# (FIG1_OUT overrides the folder):
# (a), (b) from the lsq run, (c) from the lsq-freeze-weights run (or the identical runs of other tables they reuse).
# PRESET=smoke|proxy|proxy-long|proxy-gpu|paper (default proxy), SEEDS (the first one is drawn), DEVICE, MODELS, JOBS,
# WANDB_MODE (default offline).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
source scripts/setup.sh || exit 1
python -m qat.experiments experiments/table1_freeze/config.yaml "$@"
status=$?
(( status == 2 )) && exit 2  # the launcher refused its input and ran nothing: no figure either
PRESET="${PRESET:-proxy}"
RUNS="${QAT_RUNS:-$REPO/runs}/$PRESET/table1"
read -r -a FIG_MODELS <<< "$(python -c "import yaml; c = yaml.safe_load(open('experiments/fig1_oscillation/config.yaml')); print(' '.join(c['models']))")"
[[ -n "${MODELS:-}" ]] && read -r -a FIG_MODELS <<< "${MODELS//,/ }"
SEED="$(echo "${SEEDS:-0}" | tr ',' ' ' | awk '{print $1}')"
OUT="${FIG1_OUT:-$REPO/analysis/out}"
has_run() { [[ -d "$1" ]] && [[ -n "$(find "$1" -name 'run-*.wandb' -print -quit 2>/dev/null)" ]]; }
# Table I's run directories of a model (lsq, then lsq-freeze-weights), or the identical runs of other tables
# that the launcher reused instead.
runs_of() {
  python - "$PRESET" "$RUNS" "$1" "$SEED" <<'PY'
import sys
from pathlib import Path
from qat.run_reuse import find_identical_run
preset, runs, model, seed = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
for recipe in ("lsq", "lsq-freeze-weights"):
    own = runs / model / recipe / "w4a4" / f"s{seed}"
    has_run = any(own.rglob("run-*.wandb")) if own.is_dir() else False
    print(own if has_run else find_identical_run(preset, "table1", model, recipe, 4, seed) or own)
PY
}
for model in "${FIG_MODELS[@]}"; do
  { read -r run; read -r frozen; } < <(runs_of "$model")
  if ! has_run "$run"; then
    echo "[fig1] $model: missing run table1/$model/lsq/w4a4/s$SEED (no W&B run under $run);" \
         "it failed or was not trained — see $RUNS/logs/. No figure for $model." >&2
    status=1
    continue
  fi
  args=(--run "$run" --out "$OUT/fig1_${PRESET}_${model}")
  if has_run "$frozen"; then
    args+=(--freeze-run "$frozen")
  else
    echo "[fig1] $model: missing run table1/$model/lsq-freeze-weights/w4a4/s$SEED (under $frozen);" \
         "drawing panels (a) and (b) only." >&2
    status=1
  fi
  python analysis/fig1.py "${args[@]}" || { echo "[fig1] $model: analysis/fig1.py failed" >&2; status=1; }
done
exit $status
