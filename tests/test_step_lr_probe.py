"""analysis/step_lr_probe.py scales the step-size group's lr only, and Ultralytics' LambdaLR keeps the ratio."""
import sys

import pytest
import torch

from helpers import REPO

sys.path.insert(0, str(REPO))
from analysis.step_lr_probe import scaled_step_group  # noqa: E402


def test_only_the_step_group_is_scaled_and_the_schedule_keeps_the_ratio():
    w, s = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(()))

    def build(self, lr=0.01):
        return torch.optim.SGD([{"params": [w], "param_group": "weight"}, {"params": [s], "param_group": "step"}],
                               lr=lr, momentum=0.9)

    optimizer = scaled_step_group(build, 0.1)(None)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.001])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda epoch: 1 - 0.25 * epoch)
    optimizer.step()
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0075, 0.00075])
