#!/usr/bin/env bash
# Fig. 1 (oscillations: LSQ beside ours) from Table V's runs: trains what experiments/fig1_oscillation/config.yaml
# needs (runs are shared with experiments/table5_ablation: a finished run is skipped), then draws one figure per
# model and bits of that config with analysis/fig1.py into analysis/out/fig1_<preset>_<model>_w<b>a<b>.{png,pdf}
# (FIG1_OUT overrides the folder). Each run's oscillation trackers chose the layer and weights it traced.
# PRESET=smoke|proxy|proxy-long|proxy-gpu|paper (default proxy), SEEDS (the first one is drawn), DEVICE, MODELS, JOBS,
# WANDB_MODE (default offline).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
source scripts/setup.sh || exit 1
CONFIG=experiments/fig1_oscillation/config.yaml
python -m experiments.launch "$CONFIG" "$@"
status=$?
(( status == 2 )) && exit 2  # the launcher refused its input and ran nothing: no figure either
PRESET="${PRESET:-proxy}"
RUNS="${QAT_RUNS:-$REPO/runs}/$PRESET/table5"
read -r -a FIG_MODELS <<< "$(python -c "import yaml; c = yaml.safe_load(open('$CONFIG')); print(' '.join(c['models']))")"
read -r -a FIG_BITS <<< "$(python -c "import yaml; c = yaml.safe_load(open('$CONFIG')); print(' '.join(map(str, c['bits'])))")"
[[ -n "${MODELS:-}" ]] && read -r -a FIG_MODELS <<< "${MODELS//,/ }"
SEED="$(echo "${SEEDS:-0}" | tr ',' ' ' | awk '{print $1}')"
OUT="${FIG1_OUT:-$REPO/analysis/out}"
# The run directories of LSQ and ours for a model and bits: Table V's own, or the identical run of another table
# that the launcher reused instead (the pointer it left in Table V's run directory); a line
# "missing <recipe> <dir>" for each that has no W&B run.
runs_of() {
  python - "$RUNS" "$1" "$2" "$SEED" <<'PY'
import sys
from pathlib import Path
from qat.logging.run_reader import reused_source
runs, model, bits, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for recipe in ("lsq", "scalegrad+ead+afw"):
    own = runs / model / recipe / f"w{bits}a{bits}" / f"s{seed}"
    found = next((d for d in (own, reused_source(own)) if d and d.is_dir() and any(d.rglob("run-*.wandb"))), None)
    print(f"run {found}" if found else f"missing {recipe} {own}")
PY
}
for model in "${FIG_MODELS[@]}"; do
  for bits in "${FIG_BITS[@]}"; do
    args=()
    while read -r kind a b; do
      if [[ "$kind" == run ]]; then
        args+=(--run "$a")
      else
        echo "[fig1] $model: missing run table5/$model/$a/w${bits}a${bits}/s$SEED (no W&B run under $b);" \
             "it failed or was not trained — see $RUNS/logs/." >&2
        status=1
      fi
    done < <(runs_of "$model" "$bits")
    if [[ ${#args[@]} -eq 0 ]]; then
      echo "[fig1] $model: no run to draw at w${bits}a${bits}; no figure." >&2
      continue
    fi
    python analysis/fig1.py "${args[@]}" --out "$OUT/fig1_${PRESET}_${model}_w${bits}a${bits}" \
      || { echo "[fig1] $model: analysis/fig1.py failed" >&2; status=1; }
  done
done
exit $status
