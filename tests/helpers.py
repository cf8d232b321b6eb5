"""Shared helpers for tests that run the command-line entry points in subprocesses."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WANDB_ENV = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")  # W&B's state folders


def offline_wandb_state(mp, root: Path) -> None:
    """W&B's state folders under `root` (set on the MonkeyPatch `mp`), RunLogger's default mode (offline: WANDB_MODE
    unset) and no console output: how a test writes real offline W&B runs."""
    for var in WANDB_ENV:
        mp.setenv(var, str(root / var.lower()))
    mp.delenv("WANDB_MODE", raising=False)
    mp.setenv("WANDB_SILENT", "true")


def tool_env(tmp: Path, **extra) -> dict:
    """Environment for a subprocess: tool state in `tmp`, one thread, W&B offline."""
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp / "wandb"), "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(tmp / "wandb-config"), "WANDB_DATA_DIR": str(tmp / "wandb-data"),
        "MPLCONFIGDIR": str(tmp / "mpl"), "YOLO_CONFIG_DIR": str(tmp / "yolo"), "QAT_RUNS": str(tmp / "runs"),
        "TQDM_DISABLE": "1",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_train(args: list[str], env: dict, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "qat.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"qat.train {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
