"""scripts/gpu_check.sh (issue 16): the one-call GPU check, exercised here by its CPU smoke mode the way it runs on
a lent GPU machine: no venv (QAT_PYTHON, setup.sh installs nothing) and without the packages that machine's image
lacks (wandb, ultralytics, pycocotools, yolox, loguru are hidden)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO, tool_env

SCRIPT = REPO / "scripts" / "gpu_check.sh"
ABSENT_ON_GPU_IMAGE = ("wandb", "ultralytics", "pycocotools", "yolox", "loguru")


def hide_packages(folder, names) -> str:
    """A folder whose sitecustomize makes importing any of `names` fail, for PYTHONPATH."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Hide:\n"
        f"    names = {set(names)!r}\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in self.names:\n"
        "            raise ImportError(f'{name} is not on the GPU image')\n"
        "sys.meta_path.insert(0, _Hide())\n")
    return str(folder)


def test_bad_argument_is_one_error_line():
    proc = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unknown argument '--gpu' (allowed: none, --cpu-smoke, --pack)"]


@pytest.mark.slow  # about 40 s with a warm Inductor cache
def test_cpu_smoke_prints_the_summary_and_writes_out(tmp_path):
    out = tmp_path / "out"
    env = tool_env(tmp_path, OUT=out, QAT_PYTHON=sys.executable,
                   PYTHONPATH=hide_packages(tmp_path / "hide", ABSENT_ON_GPU_IMAGE))
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout[proc.stdout.index("## gpu_check summary"):]
    for model in ("mobilenetv2", "resnet18"):
        for size in ("proxy", "paper"):
            assert any(line.split()[1:3] == [model, size] and "time" in line and "peak memory" in line
                       for line in summary.splitlines()), (model, size, summary)
    for stage in ("bench", "fp", "qat"):
        assert f"stage {stage}: ok, wall " in summary
    assert "qat top1 " in summary
    assert "QAT_PYTHON" in proc.stdout  # the lent machine's mode, not the venv
    # what the device tool brings back: the whole log, the summary, the benchmark's numbers
    assert (out / "summary.txt").read_text() == summary
    assert "=== machine" in (out / "gpu_check.log").read_text()
    steps = json.loads((out / "bench.json").read_text())["steps"]
    assert {(s["model"], s["size"]) for s in steps} == {(m, s) for m in ("mobilenetv2", "resnet18")
                                                       for s in ("proxy", "paper")}
    assert all(s["time_ratio"] > 0 and s["peak_ratio"] > 0 for s in steps)
