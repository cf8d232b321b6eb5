"""analysis/calib_scores.py scores a finished run on its calibration split (classifiers: top-1 on the held-out
slice of the training set) and keeps each score so a study resumes; analysis/damp_weight_study.py's choice follows
the mean paired calibration difference against the reference λ."""
import json
import sys

import numpy as np
import pytest
import torch

from helpers import REPO

sys.path.insert(0, str(REPO))
import analysis.calib_scores as calib  # noqa: E402
from analysis import damp_weight_study  # noqa: E402


def _run(path, recipe="damp", seed=0, damp_weight=0.1, result=None):
    path.mkdir(parents=True)
    config = {"model": "mobilenetv2", "recipe": recipe, "bits": 3, "seed": seed,
              "methods": {"damp_weight": damp_weight}}
    (path / "config.json").write_text(json.dumps(config))
    (path / "result.json").write_text(json.dumps(result or {"top1": 80.0}))
    return path


def test_calib_scores_are_kept_as_measured_and_not_measured_again(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(calib, "calib_score", lambda run: calls.append(run) or 12.5)
    runs = [_run(tmp_path / "a"), _run(tmp_path / "b")]
    cache = tmp_path / "study.json"
    assert calib.calib_scores(runs, cache) == {runs[0]: 12.5, runs[1]: 12.5}
    assert calib.calib_scores(runs, cache) == {runs[0]: 12.5, runs[1]: 12.5} and len(calls) == 2
    (tmp_path / "c").mkdir()
    with pytest.raises(SystemExit, match="not a finished run"):
        calib.calib_scores([tmp_path / "c"], cache)


def test_calib_scores_are_keyed_by_the_path_under_the_runs_root(tmp_path, monkeypatch):
    # A committed cache must read the same on a machine whose runs root lies elsewhere.
    monkeypatch.setattr(calib, "calib_score", lambda run: 12.5)
    monkeypatch.setenv("QAT_RUNS", str(tmp_path / "runs"))
    inside, outside = _run(tmp_path / "runs" / "proxy" / "t" / "s0"), _run(tmp_path / "elsewhere")
    cache = tmp_path / "study.json"
    calib.calib_scores([inside, outside], cache)
    assert sorted(json.loads(cache.read_text())) == sorted(["proxy/t/s0", str(outside.resolve())])


def test_a_run_without_a_headline_metric_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="neither top1 nor map"):
        calib.calib_score(_run(tmp_path / "r", result={"loss": 1.0}))


def test_a_classifier_is_scored_on_the_held_out_training_slice(smoke_env, smoke_lsq_run, monkeypatch):
    run_dir = smoke_lsq_run
    monkeypatch.setenv("QAT_CHECKPOINTS", smoke_env["QAT_CHECKPOINTS"])
    from qat.data import fashion_mnist as fm
    from qat.data.classification import FMNIST_MEAN, FMNIST_STD, PAD
    from qat.export.run_model import load_run
    score = calib.calib_score(run_dir)
    # The same model counted by hand over the 5 000 calibration images of the training file.
    images, labels = fm.load_split("train")
    idx = fm.calibration_indices()
    x = torch.from_numpy(np.pad(images[idx], ((0, 0), (PAD, PAD), (PAD, PAD)))).float()
    x = ((x / 255.0 - FMNIST_MEAN) / FMNIST_STD).unsqueeze(1)
    model = load_run(run_dir).model
    with torch.no_grad():
        predicted = torch.cat([model(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    by_hand = 100.0 * (predicted == torch.from_numpy(labels[idx])).float().mean().item()
    assert score == pytest.approx(by_hand, abs=1e-6)
    assert len(idx) == 5000 and score != json.loads((run_dir / "result.json").read_text())["top1"]


def test_the_damp_weight_is_changed_only_when_its_mean_paired_calibration_score_is_higher():
    cells = [("mobilenetv2", 3, s) for s in range(3)]
    ref = dict(zip(cells, [80.0, 79.0, 81.0]))
    assert damp_weight_study.choose({0.1: ref, 10.0: dict(zip(cells, [81.0, 80.0, 80.5])),
                                     1.0: dict(zip(cells, [80.5, 79.5, 81.0]))})[0] == 10.0  # +0.83 > +0.33
    assert damp_weight_study.choose({0.1: ref, 10.0: {c: v - 0.5 for c, v in ref.items()}})[0] == 0.1
    assert damp_weight_study.choose({0.1: ref, 10.0: dict(ref)})[0] == 0.1  # ties: the reference's
    with pytest.raises(SystemExit, match="reference"):
        damp_weight_study.choose({10.0: ref})


def test_the_damp_study_reports_each_weight_and_its_oscillation(tmp_path, monkeypatch):
    monkeypatch.setattr(calib, "calib_score", lambda run: {0.0: 79.0, 0.1: 79.5, 10.0: 80.5}[
        json.loads((run / "config.json").read_text())["methods"]["damp_weight"]] + int(run.name[-1]) * 0.1)
    osc = {"osc/late_fraction": 0.02, "osc/late_fraction_depthwise": 0.0, "osc/late_fraction_other": 0.025}
    runs = [_run(tmp_path / f"l{w}" / f"s{s}", seed=s, damp_weight=w, result={"top1": 80.0, **osc})
            for w in (0.1, 10.0) for s in range(2)]
    lsq = [_run(tmp_path / "lsq" / f"s{s}", recipe="lsq", seed=s, damp_weight=0.0, result={"top1": 79.0, **osc})
           for s in range(2)]
    out = tmp_path / "study.md"
    assert damp_weight_study.main([*map(str, runs), "--lsq", *map(str, lsq), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| 0 (LSQ) | 79.05 |" in text and "**damp_weight = 10**" in text
    assert "| 10 | 80.55 | +1.00 [+1.00, +1.00] (n=2) | 80.00 | 2.00 | 0.00 | 2.50 |" in text
    with pytest.raises(SystemExit, match="LSQ runs go after --lsq"):
        damp_weight_study.main([*map(str, runs + lsq), "--out", str(out)])
