"""BN folding and CLE keep the FP function up to rounding, or fail with an error naming the layer pair
(qat/prepare/function_check.py; issue 18 item 8)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import qat.prepare.cle as cle
from qat.prepare.bn_fold import fold_batchnorm
from qat.prepare.cle import CLEPair, equalize, find_cle_pairs
from qat.prepare.function_check import PrologueError, flat_output, rel_error, rounding_tol

# The smoke-preset FP MobileNetV2 (our FP cache format) on which CLE kept a pair whose middle tensor feeds a
# residual addition: fp_top1 66.80 → 12.50 after the prologue, "CLE changed the float32 output by 1.00e+00".
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "cle-smoke-mobilenetv2-fp.pt"


def smoke_trainer():
    from qat.config import RunConfig
    from qat.train.classification import Trainer
    cfg = RunConfig(model="mobilenetv2", recipe="lsq", bits=4, preset="smoke", fp_checkpoint=str(FIXTURE),
                    wandb=False, device="cpu")
    return Trainer(cfg)


def test_smoke_mobilenetv2_prologue_keeps_the_fp_model():
    from qat.prepare.pipeline import PrologueOptions, float_prologue
    trainer = smoke_trainer()
    model = trainer.fp_model().eval()
    calib = trainer.calib_inputs()
    x = calib[0]
    y_fp = flat_output(model(x))
    top1_fp = trainer.evaluate(model)["top1"]

    folded = copy.deepcopy(model)
    fold_batchnorm(folded, x)
    report = float_prologue(model, x, calib, PrologueOptions())

    found = report["cle"]
    # blocks.1.0.conv_pwl's output is block 1.1's input and its shortcut: like the 4 other pairs into a block
    # with a skip, it must be reverted (it was kept: 37 kept, 4 reverted)
    assert (found["pairs_kept"], found["pairs_reverted"]) == (36, 5)
    assert ("blocks.1.0.conv_pwl", "blocks.1.1.conv_pw") in {(p["conv1"], p["conv2"]) for p in found["reverted"]}
    assert found["rel_error_vs_relu"] <= rounding_tol(torch.float32)
    # absorption aside (DFQ's approximation), the prologue keeps the output up to rounding
    cle_only = copy.deepcopy(folded)
    equalize(cle_only, x, probe_dtype=None)
    assert rel_error(flat_output(cle_only(x)), flat_output(folded(x))) <= rounding_tol(torch.float32)
    assert rel_error(flat_output(folded(x)), y_fp) <= rounding_tol(torch.float32)
    top1_prologue = trainer.evaluate(model)["top1"]
    assert abs(top1_prologue - top1_fp) <= 1.0, (top1_fp, top1_prologue)   # 66.80 → 67.19 (was 12.50)


class SaturatedHead(nn.Module):
    """stem → x;  y = x + branch(x);  a head whose ReLU6 saturates, so the output hides what happens before it."""

    def __init__(self):
        super().__init__()
        self.stem, self.stem_act = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU6()
        self.branch, self.branch_act = nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
        self.head, self.head_act = nn.Conv2d(6, 4, 1), nn.ReLU6()
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)

    def forward(self, x):
        x = self.stem_act(self.stem(x))
        y = x + self.branch_act(self.branch(x))
        return self.fc(self.pool(self.head_act(self.head(y))).flatten(1))


def test_probe_rejects_a_skip_pair_that_the_output_does_not_show():
    torch.manual_seed(6)
    model = SaturatedHead().double().eval()
    with torch.no_grad():                              # the head's pre-activations lie far outside [0, 6]
        model.head.weight.mul_(0.1)
        model.head.bias.copy_(torch.tensor([100.0, -100.0, 100.0, -100.0]))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    pre = model.head(model.stem_act(model.stem(x)) + model.branch_act(model.branch(model.stem_act(model.stem(x)))))
    assert bool(((pre <= 0) | (pre >= 6)).all())

    found = find_cle_pairs(model, x)

    assert found["candidates"] == 1 and not found["kept"]
    (pair, err), = found["reverted"]
    assert (pair.conv1, pair.conv2) == ("stem", "branch") and err > 1e-2
    assert found["where"][("stem", "branch")] == "the input of head"


def test_a_pair_that_changes_the_output_is_an_error_naming_it(monkeypatch):
    """A pair the probe let through (simulated) that breaks the function: an error, the model left as it came."""
    torch.manual_seed(2)
    model = SaturatedHead().double().eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():                              # badly balanced stem channels: CLE scales far from 1
        model.stem.weight.mul_(torch.logspace(-1, 1, 6, dtype=torch.float64).view(-1, 1, 1, 1))
    ref = copy.deepcopy(model)
    broken = CLEPair("stem", "branch", ("stem_act",))
    monkeypatch.setattr(cle, "find_cle_pairs", lambda *a, **k: {"kept": [broken], "reverted": [], "where": {},
                                                                "candidates": 1})

    named = r"CLE changed the FP output .* layer pair stem → branch \(through stem_act\)"
    with pytest.raises(PrologueError, match=named):
        equalize(model, x)

    assert type(model.stem_act) is nn.ReLU6
    for (name, p_new), p_old in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(p_new, p_old), name


class SharedConvOutput(nn.Module):
    """conv → BN, and the conv's output read again by a residual addition: folding BN would change it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.fc((self.bn(y) + y).mean((2, 3)))


def test_bn_folding_that_changes_the_output_is_an_error_naming_the_pair():
    torch.manual_seed(3)
    model = SharedConvOutput().double()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.uniform_(0.5, 1.5)
    model.eval()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)

    with pytest.raises(PrologueError, match="folding bn into conv"):
        fold_batchnorm(model, x)

    assert isinstance(model.bn, nn.BatchNorm2d)         # left as it came
    assert rel_error(flat_output(model(x)), flat_output(ref(x))) == 0


def test_cli_reports_a_prologue_error_as_one_error_line(monkeypatch, capsys, tmp_path):
    from qat import cli
    real = cle.find_cle_pairs

    def keep_everything(*args, **kwargs):             # the old probe's blind spot, simulated
        found = real(*args, **kwargs)
        return dict(found, kept=found["kept"] + [p for p, _ in found["reverted"]], reverted=[])

    monkeypatch.setattr(cle, "find_cle_pairs", keep_everything)
    code = cli.main(["--preset", "smoke", "--model", "mobilenetv2", "--recipe", "lsq", "--bits", "4", "--no-wandb",
                     "--device", "cpu", "--fp-checkpoint", str(FIXTURE), "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(lines) == 1 and lines[0].startswith("error: CLE changed the FP output"), lines
    assert "layer pair blocks." in lines[0]
    assert not (tmp_path / "run" / "result.json").exists()
