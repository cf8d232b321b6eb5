"""analysis/afw_sensitivity.py: readings parsed with clear errors, results kept per (run, reading) so a study
over more seeds measures only what is new, and the reading chosen by code from the calibration results."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from analysis.afw_sensitivity import Reading, choose, report
from helpers import REPO, run_train


def test_reading_parse_and_errors():
    assert Reading.parse("sum/zero/mean/0.01") == Reading("sum", "zero", "mean", 0.01)
    assert Reading.parse("sum/zero/mean/0.01").key() == "sum/zero/mean/0.01"
    for bad, words in (("sum/zero/0.01", "expected"), ("total/zero/mean/0.01", "loss"),
                       ("sum/ones/mean/0.01", "theta_init"), ("sum/zero/mean/fast", "lr")):
        with pytest.raises(ValueError, match=words):
            Reading.parse(bad)


def _cache(rows: dict[str, list[tuple[int, float, float, float]]], before=(80.0, 81.0, 79.0)):
    """run → {'before', reading@None: ...} from reading → per-run (changed, objective first, last, top1)."""
    cache = {f"r{i}": {"before": b} for i, b in enumerate(before)}
    for key, per_run in rows.items():
        for i, (changed, first, last, top1) in enumerate(per_run):
            cache[f"r{i}"][f"{key}@None"] = dict(epochs=1, offsets=100, changed=changed, objective_first=first,
                                                 objective_last=last, top1=top1)
    return cache


def test_choice_needs_codes_changed_in_every_run_then_the_best_calibration_change():
    readings = [Reading.parse(k) for k in ("mean/zero/sum/0.001", "sum/zero/mean/0.01", "mean/residual/mean/0.001",
                                           "sum/residual/sum/0.001")]
    cache = _cache({
        "mean/zero/sum/0.001": [(0, 1, 0.9, 80.0), (0, 1, 0.9, 81.0), (0, 1, 0.9, 79.0)],       # no code: not chosen
        "sum/zero/mean/0.01": [(3, 1, 0.9, 80.5), (2, 1, 0.9, 81.4), (1, 1, 0.9, 79.6)],         # +0.5 mean
        "mean/residual/mean/0.001": [(9, 1, 1.1, 82.0), (9, 1, 1.1, 83.0), (9, 1, 0.9, 81.0)],   # +2: chosen
        "sum/residual/sum/0.001": [(5, 1, 0.9, 80.2), (0, 1, 0.9, 81.2), (5, 1, 0.9, 79.2)],     # a run with no code
    })
    run_dirs = [f"r{i}" for i in range(3)]
    text = report(run_dirs, readings, None, cache)
    assert "Choice" in text and "**mean/residual/mean/0.001**" in text
    summary_line = next(line for line in text.splitlines() if line.startswith("| mean/residual/mean/0.001 |"))
    assert "9–9" in summary_line and "1/3" in summary_line and "+2.00" in summary_line
    summary_line = next(line for line in text.splitlines() if line.startswith("| sum/zero/mean/0.01 |"))
    assert "1–3" in summary_line and "3/3" in summary_line and "+0.50" in summary_line


def test_no_reading_acting_is_said():
    cache = _cache({"mean/zero/sum/0.001": [(0, 1, 0.9, 80.0), (0, 1, 0.9, 81.0), (0, 1, 0.9, 79.0)]})
    text = report(["r0", "r1", "r2"], [Reading.parse("mean/zero/sum/0.001")], None, cache)
    assert "none: no reading acted in every run" in text


@pytest.mark.slow  # trains a smoke ours run and its parent (~3 min on 2 loaded cores)
def test_study_on_a_run_resumes_from_its_cache(tmp_path, smoke_env):
    out = tmp_path / "ours"
    run_train(["--recipe", "scalegrad+ead+afw", "--bits", "3", "--preset", "smoke", "--no-wandb", "--out", str(out)],
              smoke_env)
    study = [sys.executable, "analysis/afw_sensitivity.py", str(out), "--out", str(tmp_path / "study.md")]
    proc = subprocess.run(study + ["--readings", "mean/zero/sum/0.001"], cwd=REPO, env=smoke_env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cache = json.loads((tmp_path / "study.json").read_text())
    assert set(cache[str(out)]) == {"before", "mean/zero/sum/0.001@None"}
    # a second reading: the first is read from the cache, not measured again
    proc = subprocess.run(study + ["--readings", "mean/zero/sum/0.001", "sum/zero/mean/0.01"], cwd=REPO,
                          env=smoke_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = [line for line in proc.stdout.splitlines() if line.startswith(f"{out} ")]
    assert len(measured) == 1 and "sum/zero/mean/0.01" in measured[0]  # only the new reading was measured
    assert "| sum/zero/mean/0.01 |" in (tmp_path / "study.md").read_text()
    bad = subprocess.run(study + ["--readings", "sum/zero/mean"], cwd=REPO, env=smoke_env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: reading")
