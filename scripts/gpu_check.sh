#!/usr/bin/env bash
# The GPU check of issue 16: one command for a lent GPU machine (one H200, 16 cores, no registry), <= 8 minutes.
#
#   here, once:      bash scripts/gpu_check.sh --pack     # Fashion-MNIST (30 MB) into .gpucheck/ (git-ignored)
#   on the GPU:      device run: command "bash scripts/gpu_check.sh", carry [".gpucheck"], timeout_s 540
#   without a GPU:   bash scripts/gpu_check.sh --cpu-smoke   # the same stages on the CPU at tiny sizes (< 2 min)
#
# Stages, each under `timeout` (a hang costs its stage, not the call):
#   1. machine: nvidia-smi -L, python / torch / CUDA versions;
#   2. scripts/bench_quantizer.py's CUDA section: quantizer fwd+bwd, and QAT (4-bit, ScaleGrad, trackers) vs FP
#      training steps of the MobileNetV2 and ResNet18 proxies (32 px) and of both at 224 px (batch 128):
#      step-time ratio and peak-memory ratio (torch.cuda.max_memory_allocated);
#   3. a short proxy-gpu run of MobileNetV2: its FP model bounded to 1 epoch / 200 iterations (the preset would
#      train 20 epochs first), then LSQ W4A4 for 1 epoch / 300 iterations from it; wall time of each, in a
#      temporary QAT_RUNS / QAT_CHECKPOINTS (nothing left in the checkout);
#   4. a summary block of the ratios and walls.
# Everything printed also goes to $OUT/gpu_check.log when $OUT is set (the device tool brings $OUT back), with
# $OUT/bench.json and $OUT/summary.txt.
#
# Set-up: with a built .venv, scripts/setup.sh as everywhere. The lent machine has no .venv (it is not carried)
# and reaches no package registry, so setup.sh cannot build one there (it would fail at pip); when the venv is
# missing and `python3` already imports torch, the script runs setup.sh with QAT_PYTHON=python3: the image's
# interpreter and packages as they are (torch 2.11.0+cu130 by the device notes, not the pinned 2.14.1; no wandb,
# ultralytics or pycocotools, which the classifier path and the benchmark do not import; runs use --no-wandb),
# nothing installed: set-up then takes seconds. On a machine with a registry and no venv, setup.sh builds .venv
# first ("a few minutes" by setup.sh, 6.2 GB; not timed here, and outside the 8 minutes). QAT_PYTHON=/path/python
# picks the no-venv mode on any machine (tests/test_gpu_check.py runs the smoke so, with those packages hidden).
# Fashion-MNIST cannot be downloaded there: it comes from .gpucheck/ (--pack); without it stage 3 is not run (one
# line says why), the rest runs, and the exit status is 1.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PACK="$REPO/.gpucheck"

MODE=gpu
case "${1:-}" in
  "") ;;
  --cpu-smoke) MODE=cpu ;;
  --pack) MODE=pack ;;
  *) echo "error: unknown argument '$1' (allowed: none, --cpu-smoke, --pack)" >&2; exit 2 ;;
esac
if [[ $# -gt 1 ]]; then echo "error: one argument at most, got $# ($*)" >&2; exit 2; fi

if [[ $MODE == pack ]]; then
  source scripts/setup.sh || exit 1
  python - "$PACK/fashion-mnist/FashionMNIST/raw" <<'EOF' || exit 1
import shutil, sys
from pathlib import Path
from qat.data.fashion_mnist import FILES, find_dir
src, dst = find_dir(), Path(sys.argv[1])
dst.mkdir(parents=True, exist_ok=True)
for name in (n for pair in FILES.values() for n in pair):
    f = src / (name + ".gz") if (src / (name + ".gz")).is_file() else src / name
    shutil.copy2(f, dst / f.name)
print(f"[gpu_check] Fashion-MNIST copied from {src} to {dst}")
EOF
  echo "[gpu_check] now, on the lent GPU: run command 'bash scripts/gpu_check.sh', carry ['.gpucheck'], timeout_s 540"
  exit 0
fi

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu_check.log") 2>&1
fi
export PYTHONUNBUFFERED=1

# --------------------------------------------------------------------------------------------- set-up
t0=$(date +%s.%N)
if [[ -d "$PACK/fashion-mnist" ]]; then export QAT_DATA="$PACK"; fi
if [[ -z "${QAT_PYTHON:-}" && ! -f "$REPO/.venv/.requirements.sha256" ]] && python3 -c "import torch" 2>/dev/null; then
  QAT_PYTHON="$(command -v python3)"
fi
if [[ -n "${QAT_PYTHON:-}" ]]; then export QAT_PYTHON; fi
source scripts/setup.sh || { echo "error: scripts/setup.sh failed (above)" >&2; exit 1; }
PY="${QAT_PYTHON:-$REPO/.venv/bin/python}"  # the interpreter setup.sh prepared, whatever PATH holds
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export QAT_RUNS="$WORK/runs" QAT_CHECKPOINTS="$WORK/checkpoints" WANDB_MODE=disabled TQDM_DISABLE=1
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'; }
echo "[gpu_check] mode $MODE; set-up $(elapsed "$t0") s;" \
     "python $PY (${QAT_PYTHON:+QAT_PYTHON, }venv ${QAT_PYTHON:+not }used)"

if [[ $MODE == gpu ]]; then
  DEVICE=cuda PRESET=proxy-gpu FP_ITERS=200 QAT_ITERS=300
  BENCH=(--devices cuda)
  T_BENCH=210 T_FP=90 T_QAT=150  # 7.5 min at most, set-up and the machine stage (seconds) aside
else  # same stages, tiny: smoke preset, small tensors, batch 4 (224 px: batch 1), one repetition
  DEVICE=cpu PRESET=smoke FP_ITERS=5 QAT_ITERS=5
  BENCH=(--devices cpu --threads 1 --no-eager --reps 2 --step-reps 1 --act-shape 4,8,16,16 --weight-shape 32,32,3,3 --batch 4
         --paper-models mobilenetv2,resnet18 --paper-batch 1)
  T_BENCH=120 T_FP=60 T_QAT=90
  export OMP_NUM_THREADS=1  # as scripts/test.sh: on a shared 2-core machine more threads only wait on each other
fi
declare -A STATUS WALL

stage() {  # name, seconds allowed, command...: runs it under timeout, records status and wall
  local name=$1 limit=$2 start rc
  shift 2
  echo; echo "=== $name (limit ${limit} s): $*"
  start=$(date +%s.%N)
  timeout -k 10 "$limit" "$@"
  rc=$?
  WALL[$name]=$(elapsed "$start")
  case $rc in
    0) STATUS[$name]=ok ;;
    124|137) STATUS[$name]="TIMED OUT after $limit s" ;;
    *) STATUS[$name]="FAILED (exit $rc)" ;;
  esac
  echo "=== $name: ${STATUS[$name]}, ${WALL[$name]} s"
}

# --------------------------------------------------------------------------------------------- 1. machine
echo; echo "=== machine"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo "nvidia-smi: not found"; fi
"$PY" - <<'EOF'
import os, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA build {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, {os.cpu_count()} CPUs")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"cuda: {torch.cuda.device_count()} device(s); 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, "
          f"capability {p.major}.{p.minor}, {p.multi_processor_count} SMs")
else:
    print("cuda: not available")
EOF
if [[ $MODE == gpu ]] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "error: no CUDA device visible to torch (use --cpu-smoke on a machine without one)" >&2
  exit 1
fi

# --------------------------------------------------------------------------------------------- 2. benchmark
stage bench "$T_BENCH" "$PY" scripts/bench_quantizer.py "${BENCH[@]}" --json "$WORK/bench.json"

# --------------------------------------------------------------------------------------------- 3. short QAT run
RUN=("$PY" -m qat.run --preset "$PRESET" --model mobilenetv2 --device "$DEVICE" --no-wandb --epochs 1)
if "$PY" -c "from qat.data.fashion_mnist import find_dir; find_dir()" 2>/dev/null; then
  stage fp "$T_FP" "${RUN[@]}" --recipe fp --max-iterations "$FP_ITERS" --out "$WORK/fp"
  if [[ ${STATUS[fp]} == ok ]]; then
    stage qat "$T_QAT" "${RUN[@]}" --recipe lsq --bits 4 --max-iterations "$QAT_ITERS" \
      --fp-checkpoint "$WORK/fp/final.pt" --out "$WORK/qat"
  else
    STATUS[qat]="not run (no FP model)"
  fi
else
  STATUS[fp]="not run (no Fashion-MNIST: run 'bash scripts/gpu_check.sh --pack' here and carry .gpucheck)"
  STATUS[qat]="not run (no Fashion-MNIST)"
  echo; echo "=== fp, qat: ${STATUS[fp]}"
fi

# --------------------------------------------------------------------------------------------- 4. summary
if [[ -n "${OUT:-}" && -f "$WORK/bench.json" ]]; then cp "$WORK/bench.json" "$OUT/bench.json"; fi
summary() {
  echo "## gpu_check summary ($MODE, $DEVICE, preset $PRESET)"
  "$PY" - "$WORK/bench.json" <<'EOF'
import json, sys
from pathlib import Path
path = Path(sys.argv[1])
if not path.is_file():
    print("  benchmark: no results")
    sys.exit()
res = json.loads(path.read_text())
print(f"  benchmark (torch {res['torch']}, fused quantizer {'on' if res['fused'] else 'OFF'}): QAT/FP training step")
for s in res["steps"]:
    print(f"    {s['device']:<4} {s['model']:<11} {s['size']:<5} batch {s['batch']:<4} time {s['time_ratio']:5.2f}x "
          f"({s['fp_ms']:.1f} -> {s['qat_ms']:.1f} ms)   peak memory {s['peak_ratio']:5.2f}x "
          f"({s['fp_peak_mib']:.0f} -> {s['qat_peak_mib']:.0f} MiB)")
EOF
  local name
  for name in bench fp qat; do
    echo "  stage $name: ${STATUS[$name]}${WALL[$name]:+, wall ${WALL[$name]} s}"
  done
  echo "  (fp: mobilenetv2 FP, 1 epoch capped at $FP_ITERS iterations; qat: LSQ W4A4, 1 epoch capped at" \
       "$QAT_ITERS iterations; walls include process start, compilation and evaluation)"
  if [[ -f "$WORK/qat/result.json" ]]; then
    "$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print(f\"  qat top1 {r['top1']:.2f} % (FP \
{r['fp_top1']:.2f} %)\")" "$WORK/qat/result.json"
  fi
}
echo
summary | { if [[ -n "${OUT:-}" ]]; then tee "$OUT/summary.txt"; else cat; fi; }
for name in bench fp qat; do
  [[ ${STATUS[$name]} == ok ]] || exit 1
done
