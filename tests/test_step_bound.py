"""The bound on one optimizer update of a step size (qat/step_bound.py, DEVIATIONS 2b): what it cuts, what it
leaves, where it sits among the hooks, how a run gets it, and that adding it left earlier runs' identity alone."""
import math

import pytest
import torch

from qat.config import RunConfig
from qat.hooks import TrainingHook, TrainState
from qat.loop import qat_step
from qat.run.lifecycle import training_hooks
from qat.run_reuse import training_identity
from qat.step_bound import StepUpdateBound
from qat.modules import convert, quant_layers, step_parameters


def _quantized():
    torch.manual_seed(0)
    model = convert(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1)), 4,
                    quantize_first_last=True)
    for i, (_, layer) in enumerate(quant_layers(model)):
        layer.weight_quant.step.data.fill_(0.1 * (i + 1))
        layer.input_quant.step.data.fill_(0.2)
    return model


class _WriteSteps(TrainingHook):
    """A later hook that moves the step sizes after the optimizer (as EAD's EMA does)."""

    def __init__(self, factor):
        self.factor = factor

    def after_optimizer_step(self, state):
        with torch.no_grad():
            for s in step_parameters(state.model):
                s.mul_(self.factor)


def _step_with_gradient(model, hooks, grad, lr=1.0):
    steps = step_parameters(model)
    opt = torch.optim.SGD(steps, lr=lr)
    state = TrainState(model)
    for h in hooks:
        h.on_train_start(state)
    for s in steps:
        s.grad = torch.full_like(s, grad)
    qat_step(None, opt, hooks, state, steps)
    return state


def test_an_update_beyond_the_bound_is_cut_to_a_factor_one_plus_b_and_counted():
    model = _quantized()
    before = [s.detach().clone() for s in step_parameters(model)]
    bound = StepUpdateBound(0.1)
    _step_with_gradient(model, [bound], grad=min(float(b.min()) for b in before) * 0.9)  # cuts each step by 45–90 %
    for s, b in zip(step_parameters(model), before):
        torch.testing.assert_close(s.detach(), b / 1.1)
    n = sum(b.numel() for b in before)
    m = bound.epoch_metrics(None)
    assert m["step_bound/updates_bounded"] == n and m["step_bound/largest_update_factor"] > 5
    model2 = _quantized()
    _step_with_gradient(model2, [StepUpdateBound(0.1)], grad=-10.0)  # a jump up is cut too
    for s, b in zip(step_parameters(model2), before):
        torch.testing.assert_close(s.detach(), b * 1.1)


def test_an_update_within_the_bound_is_left_exactly_as_the_optimizer_made_it():
    plain, bounded = _quantized(), _quantized()
    hook = StepUpdateBound(0.5)
    grad = 1e-4
    _step_with_gradient(plain, [], grad)
    _step_with_gradient(bounded, [hook], grad)
    for a, b in zip(step_parameters(plain), step_parameters(bounded)):
        assert torch.equal(a, b)
    assert hook.epoch_metrics(None)["step_bound/updates_bounded"] == 0


def test_the_bound_comes_first_so_a_later_hooks_step_update_is_not_bounded():
    cfg = RunConfig(model="mobilenetv2", recipe="scalegrad+ead", bits=3, step_update_bound=0.1)
    hooks = training_hooks(cfg, tau=10)
    assert isinstance(hooks[0], StepUpdateBound) and sum(isinstance(h, StepUpdateBound) for h in hooks) == 1
    model = _quantized()
    before = [s.detach().clone() for s in step_parameters(model)]
    _step_with_gradient(model, [StepUpdateBound(0.1), _WriteSteps(3.0)], grad=0.0)
    for s, b in zip(step_parameters(model), before):
        torch.testing.assert_close(s.detach(), b * 3.0)  # the later hook's ×3 stands


def test_a_run_takes_the_presets_bound_unless_the_option_sets_one_and_zero_means_none(monkeypatch):
    from qat import presets
    assert RunConfig(model="yolov8n").step_bound == presets.ULTRALYTICS["proxy"]["step_update_bound"]
    assert RunConfig(model="mobilenetv2").step_bound is None
    assert not any(isinstance(h, StepUpdateBound) for h in training_hooks(RunConfig(model="mobilenetv2"), 10))
    assert RunConfig(model="mobilenetv2", step_update_bound=0.2).step_bound == 0.2
    assert RunConfig(model="yolov8n", step_update_bound=0.0).step_bound is None
    with pytest.raises(ValueError):
        StepUpdateBound(0.0)


def test_a_hook_that_saw_no_update_logs_nothing():
    hook = StepUpdateBound(0.1)
    hook.on_train_start(TrainState(_quantized()))
    assert hook.epoch_metrics(None) == {}  # e.g. AdaRound's branch, which goes straight to its post step
    hook.load_state_dict({"bounded": 7, "largest": 3.0})  # ... unless its parent's count was restored
    assert hook.epoch_metrics(None) == {"step_bound/updates_bounded": 7, "step_bound/largest_update_factor": 3.0}


def test_the_count_survives_a_resume():
    model = _quantized()
    before = min(float(s.detach().min()) for s in step_parameters(model))
    first = StepUpdateBound(0.1)
    _step_with_gradient(model, [first], grad=before * 0.9)
    saved = first.state_dict()
    resumed = StepUpdateBound(0.1)
    resumed.on_train_start(TrainState(model))
    resumed.load_state_dict(saved)
    assert resumed.epoch_metrics(None) == first.epoch_metrics(None)
    assert saved["bounded"] > 0 and math.isfinite(saved["largest"])


def test_adding_the_key_at_none_left_earlier_runs_identity_as_it_was():
    cfg = RunConfig(model="mobilenetv2", recipe="lsq", bits=4).to_dict()
    earlier = {k: v for k, v in cfg.items() if k != "step_update_bound"}
    earlier["preset_values"] = {k: v for k, v in cfg["preset_values"].items() if k != "step_update_bound"}
    assert training_identity(earlier) == training_identity(cfg)
    assert training_identity(dict(cfg, step_update_bound=0.1)) != training_identity(cfg)
    fp = RunConfig(model="yolov8n", recipe="fp").to_dict()  # an FP run never reads the bound
    assert training_identity(dict(fp, step_update_bound=0.3, preset_values=dict(fp["preset_values"],
                                                                                 step_update_bound=0.3))) \
        == training_identity(fp)
