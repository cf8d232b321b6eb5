"""analysis/step_ratio.py names the layer whose final weight step grew most against a reference run."""
import sys

import pytest
import torch

from helpers import REPO

sys.path.insert(0, str(REPO))
from analysis.step_ratio import largest_ratio  # noqa: E402


def final(run_dir, steps: dict):
    run_dir.mkdir(parents=True)
    state = {f"{name}.weight_quant.step": torch.tensor(v) for name, v in steps.items()}
    state["per_channel.weight_quant.step"] = torch.ones(4, 1, 1, 1)  # per-channel steps are not compared
    state["stem.weight_quant._extra_state"] = {"bits": 8}  # QAT state dicts hold non-tensor extra state too
    torch.save({"model": state}, run_dir / "final.pt")
    return run_dir


def test_the_largest_ratio_and_its_layer(tmp_path):
    run = final(tmp_path / "a", {"stem": 0.02, "head.cv2": 0.78, "mid": 0.1})
    ref = final(tmp_path / "b", {"stem": 0.01, "head.cv2": 0.005, "mid": 0.1})
    assert largest_ratio(run, ref) == (pytest.approx(156.0), "head.cv2")
    with pytest.raises(SystemExit, match="no final.pt"):
        largest_ratio(tmp_path / "missing", ref)
