"""analysis/detector_split_eval.py rebuilds a finished detector run's final model and scores it as the run did;
analysis/scalegrad_scope_study.py's choice is the arm with the higher mean paired calibration mAP."""
import json
import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO))
from analysis.scalegrad_scope_study import choose  # noqa: E402


def test_the_scope_choice_follows_the_mean_paired_difference_and_ties_keep_spec():
    cells = [("yolov8n", 4, s) for s in range(3)]
    all_layers = dict(zip(cells, [30.0, 20.0, 25.0]))
    assert choose({"all": all_layers, "low-bit": dict(zip(cells, [29.0, 31.0, 24.0]))})[0] == "low-bit"  # +3 mean
    assert choose({"all": all_layers, "low-bit": dict(zip(cells, [31.0, 19.0, 24.0]))})[0] == "all"      # −1 mean
    assert choose({"all": all_layers, "low-bit": dict(all_layers)})[0] == "all"
    with pytest.raises(SystemExit):
        choose({"all": all_layers, "low-bit": {("yolov8n", 3, 0): 1.0}})


@pytest.mark.slow
def test_a_smoke_detector_run_scores_its_recorded_map_when_rebuilt(dirs, monkeypatch):
    pytest.importorskip("ultralytics")
    from analysis.detector_split_eval import evaluate_on_split
    from qat.config import RunConfig
    from qat.run import run
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(dirs / "yolo"))
    monkeypatch.setenv("QAT_DATA", str(dirs / "data"))
    cfg = RunConfig(model="yolov8n", recipe="lsq", bits=4, preset="smoke", bias_correction=False, wandb=False,
                    out=str(dirs / "run"))
    run(cfg)
    recorded = json.loads((dirs / "run" / "result.json").read_text())["map"]
    assert evaluate_on_split(dirs / "run", "val") == pytest.approx(recorded, abs=0.01)
    assert 0.0 <= evaluate_on_split(dirs / "run", "calib") <= 100.0
    with pytest.raises(SystemExit, match="unknown split"):
        evaluate_on_split(dirs / "run", "test")
