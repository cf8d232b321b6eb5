"""Table I "Freeze weight" phase: changes no weight, trains the steps, logs Fig. 1(c) every iteration."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_baselines_helpers import ToyTask, eager_quantizer, snapshot, tiny_cnn  # noqa: E402,F401

from qat.baselines.step_only import StepOnlyStep  # noqa: E402
from qat.modules import quant_layers  # noqa: E402
from qat.recipes import MethodConfig, get_recipe, make_post_steps  # noqa: E402


def test_phase_changes_no_weight_and_trains_steps():
    model = tiny_cnn(bits=3)
    task = ToyTask()
    before = snapshot(model)
    out = StepOnlyStep(epochs=2, lr=1e-2).run(model, task)
    after = snapshot(model)
    steps = [k for k in before if k.endswith(".step")]
    others = [k for k in before if not k.endswith(".step")]
    assert len(steps) == 2 * 4
    assert any(k.endswith(".weight") for k in others) and any(k.endswith(".bias") for k in others)
    for k in others:                                   # latent weights and biases: bitwise equal
        assert torch.equal(after[k], before[k]), k
    changed = [k for k in steps if not torch.equal(after[k], before[k])]
    assert "4.weight_quant.step" in changed and "4.input_quant.step" in changed
    assert len(changed) == len(steps)
    assert all(p.requires_grad for p in model.parameters())
    n = task.iterations_for(2)
    assert out["step_only/iterations"] == n == 8
    assert "step_only/metric" in out


def test_logs_third_layer_steps_every_iteration():
    model = tiny_cnn(bits=3)
    task = ToyTask()
    third = [layer for _, layer in quant_layers(model)][2]
    assert third is model[4]
    w0, a0 = float(third.weight_quant.step.detach()), float(third.input_quant.step.detach())
    out = StepOnlyStep(epochs=0.5, lr=1e-2, step_offset=100).run(model, task)
    assert [s for s, _ in task.logged] == [100, 101]   # 0.5 epoch of 4 batches = 2 iterations
    last = task.logged[-1][1]
    assert last["fig1c/weight_step"] == pytest.approx(float(third.weight_quant.step.detach()))
    assert last["fig1c/act_step"] == pytest.approx(float(third.input_quant.step.detach()))
    assert [m["fig1c/iteration"] for _, m in task.logged] == [0, 1]
    assert out["step_only/weight_step_start"] == pytest.approx(w0)
    assert out["step_only/act_step_start"] == pytest.approx(a0)
    assert out["step_only/weight_step_end"] == pytest.approx(last["fig1c/weight_step"])
    assert task.logged[0][1]["fig1c/weight_step"] != w0


def test_recipe_builds_the_step():
    (step,) = make_post_steps(get_recipe("lsq-freeze-weights"), MethodConfig(step_only_epochs=3))
    assert isinstance(step, StepOnlyStep) and step.epochs == 3
