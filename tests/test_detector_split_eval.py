"""analysis/detector_split_eval.py rebuilds a finished detector run's final model and scores it as the run did;
analysis/scalegrad_scope_study.py's and step_bound_study.py's choices follow the mean paired calibration mAP."""
import json
import sys

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO))
from analysis import step_bound_study  # noqa: E402
from analysis.scalegrad_scope_study import choose  # noqa: E402


def test_the_scope_choice_follows_the_mean_paired_difference_and_ties_keep_spec():
    cells = [("yolov8n", 4, s) for s in range(3)]
    all_layers = dict(zip(cells, [30.0, 20.0, 25.0]))
    assert choose({"all": all_layers, "low-bit": dict(zip(cells, [29.0, 31.0, 24.0]))})[0] == "low-bit"  # +3 mean
    assert choose({"all": all_layers, "low-bit": dict(zip(cells, [31.0, 19.0, 24.0]))})[0] == "all"      # −1 mean
    assert choose({"all": all_layers, "low-bit": dict(all_layers)})[0] == "all"
    with pytest.raises(SystemExit):
        choose({"all": all_layers, "low-bit": {("yolov8n", 3, 0): 1.0}})


def test_the_bound_is_chosen_only_when_its_mean_paired_calibration_map_is_higher():
    cells = [("yolov8n", r, 4, s) for r in ("lsq", "damp") for s in range(2)]
    none = dict(zip(cells, [30.0, 31.0, 24.0, 30.0]))
    assert step_bound_study.choose({"none": none, "bounded": dict(zip(cells, [30.0, 30.5, 29.5, 29.0]))})[0] \
        == "bounded"
    assert step_bound_study.choose({"none": none, "bounded": dict(none)})[0] == "none"  # ties: the paper's
    assert step_bound_study.choose({"none": none, "bounded": {c: v - 0.1 for c, v in none.items()}})[0] == "none"


def _run(path, bound=None):
    path.mkdir(parents=True)
    config = {"model": "yolov8n", "recipe": "lsq", "bits": 4, "seed": 0, "step_update_bound": bound,
              "preset_values": {"step_update_bound": None}}
    (path / "config.json").write_text(json.dumps(config))
    (path / "result.json").write_text(json.dumps({"map": 30.0}))
    return path


def test_the_bound_study_refuses_mixed_arms(tmp_path):
    none, bounded = _run(tmp_path / "none"), _run(tmp_path / "b1", 0.1)
    other = _run(tmp_path / "b2", 0.2)
    with pytest.raises(SystemExit, match="share one bound"):
        step_bound_study.main(["--none", str(none), "--bounded", str(bounded), str(other), "--out",
                               str(tmp_path / "o.md")])
    with pytest.raises(SystemExit, match="trained with a bound"):
        step_bound_study.main(["--none", str(bounded), "--bounded", str(other), "--out", str(tmp_path / "o.md")])


@pytest.mark.slow
def test_a_smoke_detector_run_scores_its_recorded_map_when_rebuilt(dirs, monkeypatch):
    pytest.importorskip("ultralytics")
    from analysis.detector_split_eval import evaluate_on_split
    from qat.config import RunConfig
    from qat.run import run
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(dirs / "yolo"))
    monkeypatch.setenv("QAT_DATA", str(dirs / "data"))
    cfg = RunConfig(model="yolov8n", recipe="lsq", bits=4, preset="smoke", bias_correction=False, wandb=False,
                    out=str(dirs / "run"), step_update_bound=0.05)
    run(cfg)
    result = json.loads((dirs / "run" / "result.json").read_text())
    recorded = result["map"]
    assert result["step_bound/updates_bounded"] >= 0 and result["step_bound/largest_update_factor"] >= 1.0
    assert evaluate_on_split(dirs / "run", "val") == pytest.approx(recorded, abs=0.01)
    assert 0.0 <= evaluate_on_split(dirs / "run", "calib") <= 100.0
    with pytest.raises(SystemExit, match="unknown split"):
        evaluate_on_split(dirs / "run", "test")
