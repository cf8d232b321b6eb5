"""A damaged run file is never a silent hole (issue 18 item 5): a finished run's `.wandb` file cut to 60 % or
with 200 flipped bytes reads as damaged or cut short, the launcher does not count the run as finished, the
trainer refuses to pass it off as finished, and the table maker names it (its cell says missing)."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from helpers import REPO, offline_wandb_state, tool_env

pytest.importorskip("wandb")

from experiments.launch import RunSpec  # noqa: E402
from qat.logging.run_reader import read_local_runs  # noqa: E402

NAME = "table5/mobilenetv2/lsq/w4a4/s0"


@pytest.fixture
def finished_run(tmp_path, monkeypatch):
    """A finished smoke run of Table V's MobileNetV2 LSQ W4A4 cell as the trainer leaves it (a real offline
    W&B run written with RunLogger, then result.json); (runs root, its .wandb file)."""
    from qat.config import RunConfig
    from qat.logging import RunLogger, run_tags
    runs = tmp_path / "runs"
    monkeypatch.setenv("QAT_RUNS", str(runs))
    offline_wandb_state(monkeypatch, tmp_path)
    run_dir = runs / "smoke" / NAME
    config = RunConfig(model="mobilenetv2", recipe="lsq", bits=4, preset="smoke", table="table5").to_dict()
    logger = RunLogger(run_dir, name=NAME, group="table5", tags=run_tags("mobilenetv2", "lsq", 4), config=config)
    for step in range(40):
        logger.log({"train/loss": 1.0 / (step + 1), "epoch": step}, step=step)
    logger.summary({"top1": 81.25, "fp_top1": 88.0})
    logger.finish(0)
    (run_dir / "result.json").write_text(json.dumps({"top1": 81.25}))
    import wandb
    wandb.teardown()
    [wandb_file] = run_dir.rglob("run-*.wandb")
    return runs, wandb_file


def _table(runs, tmp_path):
    proc = subprocess.run([sys.executable, "tables/make_table5.py", "--runs", str(runs / "smoke" / "table5"),
                           "--out", str(tmp_path / "out")], cwd=REPO, env=tool_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


SPEC = RunSpec("table5", "mobilenetv2", "lsq", 4, 0, "smoke")


def test_intact_run_is_finished_and_read(finished_run, tmp_path):
    from qat.run_dir import finished_result
    runs, _ = finished_run
    assert SPEC.finished and finished_result(runs / "smoke" / NAME) == {"top1": 81.25}
    proc = _table(runs, tmp_path)
    assert "81.25 (n=1)" in proc.stdout and "could not read" not in proc.stderr


def test_truncated_run_file_is_named_and_not_finished(finished_run, tmp_path):
    runs, wandb_file = finished_run
    data = wandb_file.read_bytes()
    wandb_file.write_bytes(data[: int(0.6 * len(data))])
    assert not SPEC.finished
    from qat.run_dir import finished_result
    with pytest.raises(ValueError, match="ends before the run's end"):
        finished_result(runs / "smoke" / NAME)
    proc = _table(runs, tmp_path)
    assert f"warning: could not read run {NAME}: its W&B file" in proc.stderr
    assert "81.25" not in proc.stdout


def test_flipped_bytes_are_damage(finished_run, tmp_path):
    runs, wandb_file = finished_run
    data = bytearray(wandb_file.read_bytes())
    rng = random.Random(0)
    for pos in rng.sample(range(7, len(data)), 200):  # past the file header
        data[pos] ^= 0xFF
    wandb_file.write_bytes(bytes(data))
    [record] = read_local_runs(wandb_file)
    assert record.damage and "CRC mismatch" in " ".join(record.damage) and not record.finished
    assert not SPEC.finished
    from qat.run_dir import finished_result
    with pytest.raises(ValueError, match="damaged"):
        finished_result(runs / "smoke" / NAME)
    proc = _table(runs, tmp_path)
    assert f"warning: could not read run {NAME}: its W&B file is damaged" in proc.stderr
    assert "81.25" not in proc.stdout
