"""Real offline W&B runs written with RunLogger and read back with read_local_runs.

One module-scoped fixture writes, under a temp dir (W&B's dirs all pointed there, WANDB_MODE
unset): a finished run (metrics, tensors, histograms big enough to span several 32 KiB blocks),
a crashed run (exception inside the context manager -> exit code 1), a killed run (a subprocess
that exits with os._exit and no finish), and then resumes the killed run with its id and finishes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from qat.logging import (
    RunLogger,
    read_local_runs,
    record_from_api_run,
    run_name,
    run_tags,
)

from helpers import REPO, WANDB_ENV, offline_wandb_state  # noqa: E402

pytest.importorskip("wandb")
torch = pytest.importorskip("torch")

FIN = run_name("table5", "mobilenetv2", "lsq", 4, 0)
CRASH = run_name("table5", "mobilenetv2", "lsq", 4, 1)
KILL = run_name("table5", "mobilenetv2", "scalegrad", 3, 0)
CONFIG = {"lr": 0.01, "preset": "smoke", "model": {"name": "mobilenetv2", "bits": 4}}

KILLED_SCRIPT = textwrap.dedent("""
    import os, sys, time
    from qat.logging import RunLogger, run_tags
    from qat.logging.run_reader import read_run_file
    lg = RunLogger(sys.argv[1], name=sys.argv[2], group="table5",
                   tags=run_tags("mobilenetv2", "scalegrad", 3), config={"lr": 0.01, "part": 1},
                   flush_interval=0.2)
    print(lg.run_id, flush=True)
    lg.log({"train/loss": 1.0}, step=0)
    lg.log({"train/loss": 0.9, "val/top1": 0.3}, step=1)
    lg.summary({"best_top1": 0.3})
    lg.commit()                          # what the trainer does before writing its checkpoint
    lg.log({"train/loss": 0.8}, step=2)  # still pending: lost by the kill
    f = lg.run_path / f"run-{lg.run_id}.wandb"
    deadline = time.time() + 60          # wandb-core flushes the file every flush_interval s
    while time.time() < deadline and len(read_run_file(f).history) < 2:
        time.sleep(0.1)
    os._exit(0)                          # killed: no finish, no exit record
""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb_runs")
    with pytest.MonkeyPatch.context() as mp:
        offline_wandb_state(mp, root / "state")  # (RunLogger's default must be offline)
        mp.setenv("WANDB_DIR", str(root))
        mp.setenv("OMP_NUM_THREADS", "1")

        # 1. finished
        with RunLogger(root / "fin", name=FIN, group="table5",
                       tags=run_tags("mobilenetv2", "lsq", 4), config=CONFIG) as fin:
            for step in range(3):
                fin.log({"train/loss": 1.0 / (step + 1), "val/top1": torch.tensor(0.5 + 0.1 * step),
                         "lr": np.float32(0.01)}, step=step)
            rng = np.random.default_rng(0)
            for i in range(4):  # 4 x 512-bin histograms: one ~60 KiB history record
                fin.histogram(f"w/layer{i}", torch.from_numpy(rng.normal(size=5000)), step=2,
                              num_bins=512)
            fin.summary({"top1": 0.71, "fp_top1": 0.75, "model": "mobilenetv2", "bits": 4})
        fin_id, fin_dir = fin.run_id, fin.run_path

        # 2. crashed: an exception inside the context manager -> finish(exit_code=1)
        with pytest.raises(RuntimeError):
            with RunLogger(root / "crash", name=CRASH, group="table5",
                           tags=run_tags("mobilenetv2", "lsq", 4), config=CONFIG) as crash:
                crash.log({"train/loss": float("nan")}, step=0)
                raise RuntimeError("non-finite loss")
        crash_id = crash.run_id

        # 3. killed: a separate process that dies without finish. It must get its own wandb-core:
        # one inherited through WANDB_SERVICE would keep the dead run's id "in use" (RunLogger
        # drops the variable; without that, step 4 fails).
        assert "WANDB_SERVICE" not in os.environ
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        out = subprocess.run([sys.executable, "-c", KILLED_SCRIPT, str(root / "kill"), KILL],
                             env=env, capture_output=True, text=True, timeout=120,
                             start_new_session=True)
        assert out.returncode == 0, out.stderr
        kill_id = out.stdout.split()[0]
        before = {r.run_id: r for r in read_local_runs(root, running_window_s=0)}
        running = read_local_runs(root / "kill", running_window_s=1e9)

        # 4. resume the killed run with its id (as the trainer does from its checkpoint)
        res = RunLogger(root / "kill", name=KILL, group="table5",
                        tags=run_tags("mobilenetv2", "scalegrad", 3),
                        config={"lr": 0.01, "part": 2}, resume_id=kill_id)
        assert res.run_id == kill_id
        res.log({"train/loss": 0.8}, step=2)
        res.log({"train/loss": 0.7, "val/top1": 0.4}, step=3)
        res.summary({"top1": 0.4})
        res.finish()
        res.finish()  # idempotent
        after = {r.run_id: r for r in read_local_runs(root, running_window_s=0)}
        import wandb

        wandb.teardown()  # stop this process's wandb-core: later tests start clean
    return types_ns(root=root, fin_id=fin_id, fin_dir=fin_dir, crash_id=crash_id, kill_id=kill_id,
                    before=before, running=running, after=after)


def types_ns(**kw):
    import types

    return types.SimpleNamespace(**kw)


def test_finished_run_reads_back(runs):
    r = runs.after[runs.fin_id]
    assert (r.name, r.group, r.tags) == (FIN, "table5", ["mobilenetv2", "lsq", "w4a4"])
    assert r.state == "finished" and r.exit_code == 0 and r.segments == 1
    assert {k: r.config[k] for k in CONFIG} == CONFIG
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    assert r.config["git_commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert r.project == "qat-oscillation"
    assert r.summary["top1"] == 0.71 and r.summary["fp_top1"] == 0.75
    assert r.summary["model"] == "mobilenetv2" and r.summary["bits"] == 4
    assert [row["_step"] for row in r.history] == [0, 1, 2]
    assert r.metric("train/loss") == pytest.approx([1.0, 0.5, 1 / 3])
    assert r.metric("val/top1") == pytest.approx([0.5, 0.6, 0.7])  # 0-d tensors became numbers
    assert r.metric("lr") == pytest.approx([0.01] * 3)
    h = r.history[2]["w/layer3"]
    assert h["_type"] == "histogram" and len(h["values"]) == 512 and len(h["bins"]) == 513
    assert sum(h["values"]) == 5000


def test_run_layout_offline_inside_run_dir(runs):
    d = runs.fin_dir
    assert d.parent == runs.root / "fin" / "wandb" and d.name.startswith("offline-run-")
    f = d / f"run-{runs.fin_id}.wandb"
    assert f.stat().st_size > 2 * 32 * 1024  # records spanning several blocks were read back
    assert not (d / "files" / "wandb-summary.json").exists()  # why we parse the record log


def test_crashed_run(runs):
    r = runs.after[runs.crash_id]
    assert r.name == CRASH and r.state == "crashed" and r.exit_code == 1 and not r.finished
    assert np.isnan(r.metric("train/loss")[0])


def test_killed_run_keeps_committed_rows(runs):
    k = runs.before[runs.kill_id]
    assert k.state == "killed" and k.exit_code is None and k.name == KILL
    assert k.config["part"] == 1 and k.summary["best_top1"] == 0.3
    assert [row["_step"] for row in k.history][:2] == [0, 1]
    assert k.metric("val/top1") == [0.3]
    [r] = runs.running
    assert r.state == "running"  # same file read with a wide "still being written" window


def test_resumed_run_merges_both_parts(runs):
    r = runs.after[runs.kill_id]
    assert r.segments == 2 and r.state == "finished" and r.name == KILL
    assert r.config["part"] == 2  # later values win
    assert r.summary["best_top1"] == 0.3 and r.summary["top1"] == 0.4  # both parts' keys
    assert [row["_step"] for row in r.history] == [0, 1, 2, 3]
    assert r.metric("train/loss") == pytest.approx([1.0, 0.9, 0.8, 0.7])
    assert len(runs.after) == 3


def test_api_conversion_on_public_run_objects_matches_local(runs, tmp_path, monkeypatch):
    """The local records pushed through real wandb.apis.public.Run objects (GraphQL-shaped attrs,
    scan_history replaced: the only call that would need a server) convert to the same record."""
    import json

    for var in WANDB_ENV:
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    from wandb.apis.public import Run

    for local in runs.after.values():
        attrs = {"name": local.run_id, "displayName": local.name, "group": local.group,
                 "tags": local.tags, "state": {"crashed": "failed"}.get(local.state, local.state),
                 "config": json.dumps({k: {"value": v, "desc": None}
                                       for k, v in local.config.items()}),
                 "summaryMetrics": json.dumps(local.summary)}
        api_run = Run(None, "ent", local.project, local.run_id, attrs=attrs)
        api_run.scan_history = lambda rows=local.history: iter(json.loads(json.dumps(rows)))
        rec = record_from_api_run(api_run)
        for f in ("run_id", "name", "group", "tags", "config", "state"):
            assert getattr(rec, f) == getattr(local, f), f
        assert json.dumps(rec.summary, sort_keys=True) == json.dumps(local.summary, sort_keys=True)
        assert json.dumps(rec.history) == json.dumps(local.history)


def test_disabled_and_non_zero_rank_are_no_ops(tmp_path):
    for kw in ({"enabled": False}, {"rank": 1}):
        lg = RunLogger(tmp_path / "x", name="n", group="g", tags=[], config={}, **kw)
        lg.log({"a": 1}, step=0)
        lg.histogram("h", np.zeros(3), step=0)
        lg.summary({"a": 1})
        lg.commit()
        lg.finish()
        assert lg.run_path is None and len(lg.run_id) == 8
    assert not (tmp_path / "x").exists()
    assert RunLogger(tmp_path, "n", "g", [], {}, resume_id="abc", enabled=False).run_id == "abc"


def test_run_name_convention():
    assert run_name("table5", "mobilenetv2", "lsq+scalegrad", 3, 2) == \
        "table5/mobilenetv2/lsq+scalegrad/w3a3/s2"
    assert run_name("table1", "resnet18", "lsq", (4, 8), 0) == "table1/resnet18/lsq/w4a8/s0"
    assert run_tags("resnet18", "lsq", 4) == ["resnet18", "lsq", "w4a4"]
