"""One process per run directory and no orphaned runs (issue 18 item 3): a run directory locked by another
process is refused with one `error:` line and exit status 75, or waited for under the launcher
($QAT_WAIT_FOR_LOCK); the launcher's runs die with it (kill -9 included); run_table.sh writes no table after
the launcher was killed."""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, run_train, tool_env

RUN = ["--recipe", "lsq", "--preset", "smoke", "--table", "locked", "--epochs", "1", "--max-iterations", "1",
       "--no-wandb"]


def _hold_lock(run_dir: Path) -> int:
    """Lock the run directory as a training process does (flock on <run dir>/.lock)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_second_process_on_a_locked_run_dir_is_refused(smoke_env):
    run_dir = Path(smoke_env["QAT_RUNS"]) / "smoke/locked/mobilenetv2/lsq/w4a4/s0"
    fd = _hold_lock(run_dir)
    try:
        proc = run_train(RUN, smoke_env, check=False)
    finally:
        os.close(fd)
    assert proc.returncode == 75, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "being trained by another process" in errors[0], proc.stderr[-2000:]
    assert not (run_dir / "result.json").exists()


def test_under_the_launcher_a_locked_run_is_waited_for(smoke_env):
    run_dir = Path(smoke_env["QAT_RUNS"]) / "smoke/waits/mobilenetv2/lsq/w4a4/s0"
    fd = _hold_lock(run_dir)
    args = [a if a != "locked" else "waits" for a in RUN]
    log = run_dir.parent / "log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "qat.train", *args], cwd=REPO, text=True,
                                env={**smoke_env, "QAT_WAIT_FOR_LOCK": "1"}, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and "waiting:" not in log.read_text():
            time.sleep(0.5)
        time.sleep(1)
        assert proc.poll() is None, log.read_text()[-2000:]  # waiting, nothing written
        assert "waiting:" in log.read_text() and not (run_dir / "config.json").exists()
    finally:
        os.close(fd)
    assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
    assert (run_dir / "result.json").is_file()


LAUNCHER = """
import os, sys
import experiments.launch as ex
child = [sys.executable, "-c", "import os, time; open(os.environ['CHILD_PID'], 'w').write(str(os.getpid())); time.sleep(300)"]
ex.command = lambda *a, **k: child
ex.fp_command = lambda *a, **k: child
sys.exit(ex.main([sys.argv[1], "--preset", "smoke", "--device", "cpu", "--jobs", "1"]))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper has ended too
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_launcher_children_die_with_it(tmp_path, sig):
    config = tmp_path / "config.yaml"
    config.write_text("table: tkill\nmodels: [mobilenetv2]\nrecipes: [lsq]\nbits: [4]\n")
    env = tool_env(tmp_path, QAT_CHECKPOINTS=tmp_path / "checkpoints", CHILD_PID=tmp_path / "child.pid")
    fp = tmp_path / "checkpoints/fp/mobilenetv2-smoke.pt"  # the FP model counts as trained: one child only
    fp.parent.mkdir(parents=True)
    fp.write_bytes(b"")
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(config)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid_file = tmp_path / "child.pid"
    child = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (pid_file.is_file() and pid_file.read_text()):
            assert launcher.poll() is None, "the launcher ended before its run started"
            time.sleep(0.2)
        child = int(pid_file.read_text())
        launcher.send_signal(sig)
        assert launcher.wait(timeout=30) == (-sig if sig == signal.SIGKILL else 128 + sig)
        deadline = time.time() + 5
        while time.time() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child), "the launcher's run outlived it"
    finally:
        launcher.kill()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_run_table_writes_no_table_after_the_launcher_was_killed(tmp_path):
    """run_table.sh in a copy of its layout, with a `python` whose launcher is killed by SIGKILL."""
    (tmp_path / "experiments/tx").mkdir(parents=True)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "tables").mkdir()
    shutil.copy(REPO / "experiments/run_table.sh", tmp_path / "experiments/run_table.sh")
    (tmp_path / "scripts/setup.sh").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python"
    fake.write_text('#!/bin/sh\nif [ "$1" = "-m" ]; then kill -9 $$; fi\necho table > "$TABLE_MARK"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TABLE_MARK": str(tmp_path / "table")}
    proc = subprocess.run(["bash", str(tmp_path / "experiments/run_table.sh"), "tx", "9"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 137
    assert not (tmp_path / "table").exists()
    assert "no table written" in proc.stderr
