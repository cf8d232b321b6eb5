#!/usr/bin/env bash
# Idempotent set-up used by every entry point: .venv with the pinned requirements, Fashion-MNIST,
# and tool state (W&B, Ultralytics, Matplotlib) kept out of the home directory.
# Source it (`source scripts/setup.sh`) to get the environment; running it only prepares.
# QAT_PYTHON=/path/to/python: use that interpreter and its packages as they are (no .venv, nothing installed; qat is
# imported from this checkout through PYTHONPATH): for a machine that cannot reach a package registry but has
# PyTorch, such as a lent GPU machine (scripts/gpu_check.sh). Nothing is downloaded then: Fashion-MNIST must be
# found already (the Debian package's folder or $QAT_DATA/fashion-mnist), else only a warning is printed.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export QAT_DATA="${QAT_DATA:-$REPO/data}"
# The installing part runs in a subshell with strict error handling, so sourcing this file does not
# change the caller's shell options.
VENV="$REPO/.venv"

# A full disk otherwise shows up as a stray ENOSPC deep inside pip or a test: say so up front.
require_free_gb() {  # directory, GB needed, what needs them
  local free_gb
  free_gb="$(df -Pk "$1" | awk 'NR == 2 {printf "%d", $4 / 1048576}')"
  if (( free_gb < $2 )); then
    echo "[setup] $3 needs about $2 GB free on the disk of $1; $free_gb GB are free" >&2
    return 1
  fi
}
(
set -euo pipefail
if [[ -n "${QAT_PYTHON:-}" ]]; then
  "$QAT_PYTHON" -c "import torch, torchvision, timm, numpy" ||
    { echo "[setup] QAT_PYTHON=$QAT_PYTHON lacks packages qat needs (above)" >&2; exit 1; }
else
STAMP="$VENV/.requirements.sha256"
want="$(cat "$REPO/requirements.txt" "$REPO/requirements.lock.txt" "$REPO/requirements-nodeps.txt" | sha256sum | cut -d' ' -f1)"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
  require_free_gb "$REPO" 7 "installing the pinned requirements (torch's CUDA build: 6.2 GB in .venv)"
  echo "[setup] installing pinned requirements (first run: a few minutes)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -r "$REPO/requirements.txt" -c "$REPO/requirements.lock.txt" >&2
  "$VENV/bin/python" -m pip install -q --no-deps -r "$REPO/requirements-nodeps.txt" >&2
  echo "$want" > "$STAMP"
fi
# The qat package itself, editable (pyproject.toml), so that any script or notebook run with this venv's python
# imports it without path edits; its own stamp, so that a venv made before pyproject.toml gets it once.
QAT_STAMP="$VENV/.qat-editable.sha256"
want_qat="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [[ "$(cat "$QAT_STAMP" 2>/dev/null)" != "$want_qat" ]]; then
  echo "[setup] installing qat into $VENV (pip install -e .)" >&2
  # the venv's setuptools builds it offline; an older one without PEP 660 support: an isolated build
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$REPO" >&2 2>/dev/null ||
    "$VENV/bin/python" -m pip install -q --no-deps -e "$REPO" >&2
  echo "$want_qat" > "$QAT_STAMP"
fi
fi

# Fashion-MNIST: the Debian package when we can install it, else torchvision's downloader into $QAT_DATA.
FMNIST_DEB=/usr/share/datasets/fashion-mnist
if [[ ! -f "$FMNIST_DEB/train-images-idx3-ubyte.gz" && ! -d "$QAT_DATA/fashion-mnist/FashionMNIST/raw" ]]; then
  if [[ -n "${QAT_PYTHON:-}" ]]; then
    echo "[setup] warning: Fashion-MNIST not found in $FMNIST_DEB or $QAT_DATA/fashion-mnist/FashionMNIST/raw" \
         "(nothing is installed or downloaded with QAT_PYTHON set)" >&2
  else
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
      echo "[setup] installing Debian package dataset-fashion-mnist" >&2
      (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }) || true
    fi
    if [[ ! -f "$FMNIST_DEB/train-images-idx3-ubyte.gz" ]]; then
      echo "[setup] downloading Fashion-MNIST into $QAT_DATA/fashion-mnist" >&2
      "$VENV/bin/python" -c "import sys, torchvision; torchvision.datasets.FashionMNIST(sys.argv[1], download=True)" \
        "$QAT_DATA/fashion-mnist" >&2
    fi
  fi
fi
) || { echo "[setup] failed" >&2; return 1 2>/dev/null || exit 1; }

# Tool state stays inside the repository (or the run directory a tool is pointed at), not in ~.
export QAT_STATE="${QAT_STATE:-$REPO/.state}"
mkdir -p "$QAT_STATE"
export WANDB_MODE="${WANDB_MODE:-offline}"
export WANDB_DIR="${WANDB_DIR:-$REPO/runs}" WANDB_CACHE_DIR="${WANDB_CACHE_DIR:-$QAT_STATE/wandb-cache}"
export WANDB_CONFIG_DIR="${WANDB_CONFIG_DIR:-$QAT_STATE/wandb-config}" WANDB_DATA_DIR="${WANDB_DATA_DIR:-$QAT_STATE/wandb-data}"
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$QAT_STATE/ultralytics}" YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false
export MPLCONFIGDIR="${MPLCONFIGDIR:-$QAT_STATE/matplotlib}" TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$QAT_STATE/inductor}"
export THP_MEM_ALLOC_ENABLE="${THP_MEM_ALLOC_ENABLE:-1}"  # transparent huge pages for big CPU buffers (docs/PERFORMANCE.md)
# qat is installed in .venv; this checkout still comes first where several checkouts share one venv.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n "${QAT_PYTHON:-}" ]]; then  # its folder first on PATH (a bare name is resolved, never "." on PATH)
  export PATH="$(dirname "$(command -v "$QAT_PYTHON")"):$PATH"
else
  export PATH="$VENV/bin:$PATH"
fi
