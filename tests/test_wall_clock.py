"""qat/run/wall_clock.py: phases are exclusive and add up to the wall; a finished run keeps its profile."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from helpers import REPO, run_train
from qat.run.wall_clock import PHASES, WallClock


def test_nested_phases_count_once_and_add_up():
    clock = WallClock()
    with clock.phase("post"):
        time.sleep(0.05)
        with clock.phase("eval"):  # an evaluation inside a post step is evaluation time only
            time.sleep(0.1)
        time.sleep(0.05)
    with clock.phase("eval"):
        time.sleep(0.05)
    r = clock.result()
    assert r["time/post_s"] == pytest.approx(0.10, abs=0.03)
    assert r["time/eval_s"] == pytest.approx(0.15, abs=0.03)
    assert sum(r[f"time/{p}_s"] for p in PHASES) + r["time/other_s"] == pytest.approx(r["time/total_s"], abs=0.01)
    with pytest.raises(ValueError, match="unknown phase"):
        with clock.phase("lunch"):
            pass


def test_a_run_keeps_its_profile(tmp_path, smoke_env):
    # With no cached FP model the run trains it first: every task counts that as `parent` (as Ultralytics' does).
    env = dict(smoke_env, QAT_RUNS=str(tmp_path / "runs"), QAT_CHECKPOINTS=str(tmp_path / "empty-cache"))
    out = tmp_path / "lsq"
    run_train(["--recipe", "lsq", "--bits", "4", "--preset", "smoke", "--out", str(out)], env)
    result = json.loads((out / "result.json").read_text())
    phases = {p: result[f"time/{p}_s"] for p in PHASES}
    assert phases["startup"] > 0 and phases["train"] > 0 and phases["eval"] > 0 and phases["checkpoint"] > 0
    assert phases["wandb"] > 0 and phases["prologue"] > 0
    fp = json.loads((tmp_path / "runs/smoke/fp/mobilenetv2/fp/s0/result.json").read_text())
    assert phases["parent"] >= fp["time/total_s"] > phases["prologue"]
    assert 0 < result["time/first_iteration_s"] < phases["train"]
    assert sum(phases.values()) + result["time/other_s"] == pytest.approx(result["time/total_s"], abs=0.05)
    assert 0 <= result["time/other_s"] < 0.2 * result["time/total_s"]
    proc = subprocess.run([sys.executable, "analysis/run_profile.py", str(out), str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"| {out} | {result['time/total_s']:.1f} |" in proc.stdout and "(no profile" in proc.stdout

