"""scripts/wandb_sync.py: finds a table's offline W&B runs under runs/<preset>/<table>/ (where `wandb sync` alone
finds none) and syncs them to a project; checked up to the command it would run (no network here)."""
from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

from helpers import REPO, tool_env

pytest.importorskip("wandb")

RUNS = ["table5/mobilenetv2/lsq/w4a4/s0", "table5/yolov8n/lsq/w4a4/s0", "table2/mobilenetv2/lsq/w4a4/s0",
        "fp/mobilenetv2/fp/s0", "fp/resnet18/fp/s0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sync")
    writer = """
import sys
from pathlib import Path
from qat.logging import RunLogger
root = Path(sys.argv[1])
for name in sys.argv[2:]:
    lg = RunLogger(root / "smoke" / name, name=name, group=name.split("/")[0], tags=[], config={"preset": "smoke"})
    lg.log({"train/loss": 1.0}, step=0)
    lg.finish()
"""
    env = tool_env(root / "state")
    proc = subprocess.run([sys.executable, "-c", writer, str(root / "runs"), *RUNS], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root


def sync(runs, *args):
    env = tool_env(runs / "state", QAT_RUNS=runs / "runs")
    env.pop("PRESET", None)
    return subprocess.run([sys.executable, "scripts/wandb_sync.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_lists_the_tables_offline_runs_and_the_sync_command(runs):
    proc = sync(runs, "table5", "--preset", "smoke", "--project", "qat-test", "--entity", "me", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    *dirs, count, command = proc.stdout.strip().splitlines()
    expected = [runs / "runs" / "smoke" / name for name in RUNS[:2]]
    assert len(dirs) == 2 and all(any(d.startswith(f"{e}/wandb/offline-run-") for d in dirs) for e in expected)
    assert count == "# 2 run directories; would run:"
    argv = shlex.split(command)
    assert argv[1:6] == ["-m", "wandb", "sync", "--project", "qat-test"] and argv[6:8] == ["--entity", "me"]
    assert argv[8:] == dirs


def test_with_fp_adds_the_fp_runs_of_the_tables_models(runs):
    proc = sync(runs, "table5", "--preset", "smoke", "--with-fp", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    dirs = [line for line in proc.stdout.splitlines() if "offline-run-" in line and not line.startswith(sys.executable)]
    assert len(dirs) == 3 and sum("/fp/mobilenetv2/fp/s0/" in d for d in dirs) == 1
    assert not any("resnet18" in d for d in dirs)  # not a model of table5


def test_a_table_without_runs_is_one_error_line(runs):
    proc = sync(runs, "table3", "--preset", "smoke", "--dry-run")
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
