"""analysis/step_trace.py: one line per optimizer step with the layer's step before and after it and the
gradient the backward left."""
import json
import sys

import pytest
import torch

from helpers import REPO
from qat.hooks import TrainState
from qat.loop import qat_step
from test_baselines_helpers import tiny_cnn

sys.path.insert(0, str(REPO))
from analysis.step_trace import traced_step  # noqa: E402


def test_each_step_writes_the_steps_before_and_after_and_their_gradient(tmp_path):
    model = tiny_cnn(bits=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(model)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "trace.jsonl"
    with open(path, "w") as out:
        step = traced_step(qat_step, "2", out)
        for _ in range(2):
            step(model(x).square().mean(), optimizer, [], state)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["t"] for r in rows] == [0, 1]
    layer = model[2]
    assert rows[1]["step_after"] == pytest.approx(float(layer.weight_quant.step))
    for r in rows:  # plain SGD without momentum: after = before − lr · gradient
        assert r["step_after"] == pytest.approx(r["step_before"] - 0.1 * r["grad"], rel=1e-5)
        assert 0.0 < r["nonzero_codes"] <= 1.0 and r["lr"] == 0.1
    with open(tmp_path / "other.jsonl", "w") as out, pytest.raises(SystemExit, match="no layer"):
        traced_step(qat_step, "nope", out)(model(x).square().mean(), optimizer, [], state)
