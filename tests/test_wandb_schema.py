"""One W&B schema for every task (qat/logging/schema.py): a smoke classifier launched through the table launcher
(its FP run included) and a smoke YOLOv8-n (FP and QAT, through the Ultralytics trainer) log the same flat config
keys and the same metric names; a detector epoch without validation logs no val/ key (Ultralytics passes placeholder
zeros for mAP and the validation losses there)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from helpers import REPO, tool_env
from qat.logging.run_reader import read_local_runs
from qat.logging.schema import (CONFIG_KEYS, COMMON_METRICS, EPOCH_METRICS, PROLOGUE_METRICS, RUNNING_METRICS,
                                VAL_METRICS, unknown_metrics)

pytest.importorskip("ultralytics")
pytest.importorskip("wandb")
pytestmark = pytest.mark.slow  # three minutes on a shared 2-core CPU; the fast suite has
# tests/test_detection_ultralytics.py::test_an_epoch_without_validation_logs_no_val_metric


def history_names(rec) -> set[str]:
    return {k for row in rec.history for k in row if not k.startswith("_")}


def classifier_records(tmp_path) -> dict:
    """FP and LSQ W4A4 MobileNetV2 at the smoke preset, through `python -m experiments.launch` (as run.sh does)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"table": "schema", "models": ["mobilenetv2"], "recipes": ["lsq"], "bits": [4]}))
    env = tool_env(tmp_path, QAT_CHECKPOINTS=tmp_path / "checkpoints")
    for var in ("SEEDS", "MODELS", "RECIPES", "PRESET", "JOBS"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "experiments.launch", str(config), "--preset", "smoke", "--jobs", "1",
                           "--epochs", "2", "--no-cle", "--no-bias-correction"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text() for p in (tmp_path / "runs").rglob("*.log"))
    assert proc.returncode == 0, proc.stderr[-2000:] + logs[-3000:]
    return {r.name: r for r in read_local_runs(tmp_path / "runs" / "smoke")}


def detector_records(tmp_path, monkeypatch) -> dict:
    """FP (1 epoch) then LSQ W4A4 (2 epochs) YOLOv8-n on a tiny FMNIST-Det, QAT validating only after its last
    epoch (as the proxy preset does)."""
    from qat.data.fmnist_det import FMNISTDetConfig, build_fmnist_det
    from qat.config import RunConfig
    from qat.presets import ULTRALYTICS
    from qat.run import run

    monkeypatch.setenv("QAT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("QAT_CHECKPOINTS", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setitem(ULTRALYTICS["smoke"], "val_every_epoch", False)
    data = build_fmnist_det(FMNISTDetConfig(train_size=16, val_size=8, canvas=64, min_size=12, max_size=40, seed=3),
                            tmp_path / "data")
    run(RunConfig(model="yolov8n", recipe="lsq", bits=4, preset="smoke", data=str(data.yaml), table="schema",
                  epochs=2, bias_correction=False))
    return {r.name: r for r in read_local_runs(tmp_path / "runs" / "smoke")}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        runs = {**classifier_records(tmp_path_factory.mktemp("cls")),
                **detector_records(tmp_path_factory.mktemp("det"), mp)}
        import wandb
        wandb.teardown()
    return runs


CLS_QAT, CLS_FP = "schema/mobilenetv2/lsq/w4a4/s0", "fp/mobilenetv2/fp/s0"
DET_QAT, DET_FP = "schema/yolov8n/lsq/w4a4/s0", "fp/yolov8n/fp/s0"


def test_fp_runs_are_logged(records):
    assert records[CLS_FP].finished and records[DET_FP].finished
    assert records[CLS_FP].config["recipe"] == "fp" and records[CLS_FP].config["bits"] is None


def test_every_task_logs_the_same_flat_config_keys(records):
    for name in (CLS_QAT, CLS_FP, DET_QAT, DET_FP):
        rec = records[name]
        assert rec.finished, name
        assert set(rec.config) == CONFIG_KEYS, name
        table, model, recipe, *_ = name.split("/")
        assert (rec.config["table"], rec.config["model"], rec.config["recipe"], rec.config["preset"]) == \
            (table, model, recipe, "smoke")
        assert rec.config["lr"] > 0 and rec.config["iterations"] > 0 and rec.config["batch_size"] > 0, name
    assert set(records[CLS_QAT].config["methods"]) == set(records[DET_QAT].config["methods"])
    assert records[CLS_QAT].config["bits"] == records[DET_QAT].config["bits"] == 4
    assert (records[CLS_QAT].config["task"], records[CLS_QAT].config["metric"]) == ("classification", "top1")
    assert (records[DET_QAT].config["task"], records[DET_QAT].config["metric"]) == ("detection", "map")
    assert records[CLS_QAT].config["epochs"] == records[DET_QAT].config["epochs"] == 2


def test_every_task_logs_the_same_metric_names(records):
    names = {n: history_names(records[n]) for n in (CLS_QAT, CLS_FP, DET_QAT, DET_FP)}
    for n, task in ((CLS_QAT, "classification"), (CLS_FP, "classification"), (DET_QAT, "detection"),
                    (DET_FP, "detection")):
        assert unknown_metrics(names[n], task) == set(), n  # e.g. Ultralytics' lr/pg0, metrics/mAP50-95(B)
    common = set(COMMON_METRICS)
    assert names[CLS_QAT] & common == names[DET_QAT] & common == common
    assert names[CLS_FP] & common == names[DET_FP] & common == set(EPOCH_METRICS + VAL_METRICS + RUNNING_METRICS)
    assert set(PROLOGUE_METRICS).isdisjoint(names[CLS_FP] | names[DET_FP])
    for n, key in ((CLS_QAT, "top1"), (DET_QAT, "map"), (CLS_FP, "top1"), (DET_FP, "map")):
        assert records[n].summary["metric"] == records[n].summary[key], n


def test_a_detector_epoch_without_validation_logs_no_val_metric(records):
    rows = {row["epoch"]: row for row in records[DET_QAT].history if "epoch" in row}
    assert sorted(rows) == [1, 2]
    assert not [k for k in rows[1] if k.startswith(("val/", "metrics/"))], rows[1]  # validated after epoch 2 only
    assert rows[2]["val/metric"] == records[DET_QAT].summary["map_trained"]
    assert rows[1]["lr"] > 0 and rows[1]["train/loss"] > 0
