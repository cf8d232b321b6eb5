"""Whole Ultralytics detection runs through the run lifecycle (`qat.run.run`): FP → QAT with branching and post steps, W&B logging,
the paper preset on a tiny COCO-format set, and the CLI's one-line errors."""
import json

import pytest
import torch

from qat.data.fmnist_det import FMNISTDetConfig, build_fmnist_det
from qat.cli import main as run_main
from qat.config import RunConfig
from qat.run import run

pytest.importorskip("ultralytics")

def main(argv):
    return run_main(argv, default_model="yolov8n")  # python -m qat.detection


TINY = FMNISTDetConfig(train_size=16, val_size=8, canvas=64, min_size=12, max_size=40, seed=2)


@pytest.mark.slow
def test_fp_then_ours_branching_from_scalegrad_with_afw_and_wandb(dirs):
    from qat.logging.run_reader import read_local_runs

    ds = build_fmnist_det(TINY, dirs / "data")
    cfg = RunConfig(model="yolov8n", recipe="scalegrad+ead+afw", bits=4, preset="smoke", data=str(ds.yaml),
                          table="t", bias_correction=False)
    result = run(cfg)
    # FP pretraining ran first and was cached; then the scalegrad parent up to τ; then ours from its τ checkpoint.
    cached = list((dirs / "checkpoints" / "fp").glob("yolov8n-det-smoke-*.pt"))
    fp_model = dirs / "runs" / "smoke" / "fp" / "yolov8n" / "fp" / "s0" / "fp.pt"  # the cache is the FP run's copy
    assert len(cached) == 1 and cached[0].read_bytes() == fp_model.read_bytes()
    parent = dirs / "runs" / "smoke" / "t" / "yolov8n" / "scalegrad" / "w4a4" / "s0"
    assert (parent / "checkpoint_tau.pt").is_file() and (parent / "result.json").is_file()
    for key in ("map", "map50", "map_trained", "afw/metric", "afw/weights", "freeze/fraction_frozen"):
        assert key in result, key
    assert 0.0 <= result["map"] <= 100.0
    # its profile: the scalegrad parent (and the FP model) trained in this process count as `parent`
    assert 0 < result["time/parent_s"] < result["time/total_s"] and result["time/post_s"] > 0
    run_dir = cfg.run_dir
    assert json.loads((run_dir / "result.json").read_text())["recipe"] == "scalegrad+ead+afw"
    assert run(cfg) == json.loads((run_dir / "result.json").read_text())  # finished: not rerun
    records = {r.name: r for r in read_local_runs(run_dir)}
    rec = records["t/yolov8n/scalegrad+ead+afw/w4a4/s0"]
    assert rec.finished and rec.summary["metric"] == rec.summary["map"] and rec.metric("val/metric")


@pytest.mark.slow
def test_paper_preset_runs_two_iterations_on_a_tiny_coco_set(dirs):
    from qat.detection.ultralytics_qat import build_detector

    ds = build_fmnist_det(TINY, dirs / "coco")  # COCO JSON + Ultralytics layout, like a COCO subset
    fp = dirs / "fp.pt"
    torch.save({"model": build_detector("yolov8n", nc=10).state_dict()}, fp)
    cfg = RunConfig(model="yolov8n", recipe="lsq", bits=4, preset="paper", data=str(ds.yaml),
                          val_json=str(ds.coco_json("val")), fp_checkpoint=str(fp), imgsz=64, batch_size=4,
                          max_iterations=2, wandb=False, out=str(dirs / "paper_run"))
    result = run(cfg)
    trained = torch.load(dirs / "paper_run" / "trained.pt", weights_only=False)
    assert trained["iteration"] == 2
    assert not (dirs / "paper_run" / "checkpoint.pt").exists()  # a finished run keeps no resume copy
    assert 0.0 <= result["map"] <= 100.0 and result["epochs"] == 100


def test_paper_preset_without_data_is_one_clear_error(dirs, capsys):
    assert main(["--preset", "paper", "--recipe", "lsq", "--no-wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--data" in err[0]


def test_an_unfinished_run_needs_resume(dirs, capsys):
    cfg = RunConfig(model="yolov8n", recipe="lsq", preset="smoke", out=str(dirs / "run"), wandb=False)
    (cfg.run_dir / "weights").mkdir(parents=True)
    (cfg.run_dir / "checkpoint.pt").write_bytes(b"")
    assert main(["--recipe", "lsq", "--preset", "smoke", "--out", str(cfg.run_dir), "--no-wandb"]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_bad_bits_is_one_clear_error(dirs, capsys):
    with pytest.raises(SystemExit) as e:  # refused while parsing, like every option (tests/test_cli_validation.py)
        main(["--bits", "9", "--no-wandb"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: argument --bits: must be an integer between 2 and 8, got '9'"


def test_a_cached_fp_detector_with_other_budgets_is_one_clear_error(dirs, capsys):
    from qat.config import detector_fp_cache
    from qat.detection.train import dataset_for
    from qat.presets import ULTRALYTICS as DET_PRESETS
    ds = build_fmnist_det(TINY, dirs / "data")
    cfg = RunConfig(model="yolov8n", recipe="lsq", preset="smoke", data=str(ds.yaml), wandb=False)
    cached = detector_fp_cache(cfg.model, cfg.preset, dataset_for(cfg)[2])
    cached.parent.mkdir(parents=True)
    stale = dict(DET_PRESETS["smoke"], fp_epochs=DET_PRESETS["smoke"]["fp_epochs"] + 1)
    torch.save({"model": {}, "preset_values": stale}, cached)
    assert main(["--recipe", "lsq", "--preset", "smoke", "--data", str(ds.yaml), "--no-wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was trained with fp_epochs=" in err[0], err


def test_a_finished_fp_run_puts_a_deleted_cached_fp_detector_back(dirs, monkeypatch):
    from qat.config import FP_TABLE, detector_fp_cache
    from qat.detection import train as det_train
    from qat.run_dir import claim
    monkeypatch.setattr(det_train, "dataset_for", lambda c: ("data.yaml", None, "d1g3st00"))
    fp = RunConfig(model="yolov8n", recipe="fp", preset="smoke", table=FP_TABLE, wandb=False)
    with claim(fp.run_dir, fp.to_dict()):  # a finished FP run as this code leaves it
        (fp.run_dir / det_train.FP_MODEL).write_bytes(b"the FP detector")
        (fp.run_dir / "result.json").write_text(json.dumps({"map": 12.0}))
    cache = detector_fp_cache("yolov8n", "smoke", "d1g3st00")
    assert run(fp) == {"map": 12.0} and cache.read_bytes() == b"the FP detector"
    cache.write_bytes(b"kept")  # a cache in place is left as it is
    assert run(fp) == {"map": 12.0} and cache.read_bytes() == b"kept"
    cache.unlink()
    (fp.run_dir / det_train.FP_MODEL).unlink()  # a run of older code keeps no copy: one clear error
    with pytest.raises(FileNotFoundError, match="delete that run directory"):
        run(fp)
