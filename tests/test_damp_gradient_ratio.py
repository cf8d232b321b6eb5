"""analysis/damp_gradient_ratio.py measures Damp's pull against the task gradient per layer group on a run's
checkpoint; kernel_mean makes it C_in·k·k-dependent, so depthwise layers get far more than wide pointwise ones."""
import sys

import pytest
import torch

from helpers import REPO

sys.path.insert(0, str(REPO))
from analysis import damp_gradient_ratio as ratio  # noqa: E402


def test_layer_groups():
    from torch import nn
    assert ratio.layer_group(nn.Conv2d(8, 8, 3, groups=8)) == "depthwise"
    assert ratio.layer_group(nn.Conv2d(16, 8, 1)) == "pointwise"
    assert ratio.layer_group(nn.Conv2d(16, 8, 3)) == "other" and ratio.layer_group(nn.Linear(8, 10)) == "other"
    assert ratio.layer_group(nn.Conv2d(1, 16, 3)) == "other"  # a one-channel stem is not depthwise


def test_the_ratio_of_a_smoke_run_scales_with_lambda_and_favours_depthwise(smoke_env, smoke_lsq_run, monkeypatch):
    run_dir = smoke_lsq_run
    monkeypatch.setenv("QAT_CHECKPOINTS", smoke_env["QAT_CHECKPOINTS"])
    ratios = ratio.gradient_ratios(run_dir, "trained.pt", batches=2)
    by_group = {g: [r for _, k, r in ratios if k == g] for g in ("depthwise", "pointwise")}
    assert all(r > 0 for _, _, r in ratios) and all(by_group.values())
    assert sorted(by_group["depthwise"])[len(by_group["depthwise"]) // 2] > \
        sorted(by_group["pointwise"])[len(by_group["pointwise"]) // 2]
    text = ratio.report(run_dir, "trained.pt", [0.1, 10])
    row = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| 0.1 ") or
           line.startswith("| 10 ")}
    first = float(row["0.1"].split("|")[2]), float(row["10"].split("|")[2])
    assert first[1] == pytest.approx(100 * first[0], rel=0.01)
    assert "depthwise" in text.splitlines()[-1]
