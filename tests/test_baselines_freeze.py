"""Freeze baseline (SPEC §5, qat.freeze): threshold schedule; an oscillating weight gets frozen to
round(EMA of its codes since freeze onset); freezing pins the code and stops the latent weight's gradient;
the frozen element's step gradient carries LSQ's gradient scale; frozen stays frozen."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_baselines_helpers import eager_quantizer, tiny_cnn  # noqa: E402,F401

from qat.freeze import FreezeHook, freeze_threshold  # noqa: E402
from qat.hooks import TrainState  # noqa: E402
from qat.modules import quant_layers  # noqa: E402
from qat.recipes import MethodConfig, get_recipe, make_hooks  # noqa: E402


def test_threshold_schedule():
    assert freeze_threshold(0.0, 4) is None and freeze_threshold(0.2499, 3) is None
    assert freeze_threshold(0.25, 4) == pytest.approx(0.1)
    assert freeze_threshold(1.0, 4) == pytest.approx(0.01)
    assert freeze_threshold(1.0, 3) == pytest.approx(0.011)
    assert freeze_threshold(0.625, 4) == pytest.approx(0.01 + 0.5 * 0.09 * (1 + math.cos(math.pi / 2)))


def _setup(momentum=0.5):
    model = tiny_cnn(bits=3)
    model.train()
    hook = FreezeHook(bits=3, momentum=momentum)
    hook.on_train_start(TrainState(model=model, iteration=0, total_iterations=100))
    layer = dict(quant_layers(model))["2"]
    return model, hook, layer


def _forward_weight(layer):
    """One training forward of the weight quantizer (what updates the tracker)."""
    return layer.weight_quant(layer.weight)


def _set_code(layer, idx, code, s):
    """Put one latent weight inside code's bin (0.3 steps off the level, towards the previous code)."""
    with torch.no_grad():
        layer.weight[idx] = (code + 0.3) * s


def test_oscillating_weight_is_frozen_to_rounded_code_ema_since_onset():
    """SPEC §5: the code EMA starts at freeze onset (25 %), bias-corrected; before onset nothing freezes."""
    model, hook, layer = _setup(momentum=0.1)
    wq = layer.weight_quant
    s = float(wq.step.detach())
    idx = (0, 0, 1, 1)
    _set_code(layer, idx, -3, s)
    _forward_weight(layer)                   # first call initialises the tracker
    for _ in range(5):                       # a long stay at code -3, before onset
        _forward_weight(layer)
    hook.after_optimizer_step(TrainState(model=model, iteration=10, total_iterations=100))
    assert not bool(wq.frozen.mask.any()) and not wq.tracker.code_ema_started
    # onset at 25 %: nothing oscillated yet; the code EMA restarts from here
    hook.after_optimizer_step(TrainState(model=model, iteration=25, total_iterations=100))
    assert wq.tracker.code_ema_started and not bool(wq.frozen.mask.any())
    # then the weight oscillates between codes 1 and 2: hand simulation of the bias-corrected code EMA
    ema, n = 0.0, 0
    for c in [1, 2, 1, 2, 1]:
        _set_code(layer, idx, c, s)
        _forward_weight(layer)
        ema, n = 0.1 * c + 0.9 * ema, n + 1
    assert float(wq.tracker.code_ema()[idx]) == pytest.approx(ema / (1 - 0.9 ** n))
    hook.after_optimizer_step(TrainState(model=model, iteration=30, total_iterations=100))
    assert bool(wq.frozen.mask[idx])
    assert int(wq.frozen.mask.sum()) == 1   # every other weight kept its code: frequency 0
    # the centre of the recent oscillation (1.40 → 1); an EMA over the whole run says 0 (-0.47: the early -3s)
    assert float(wq.frozen.codes[idx]) == round(ema / (1 - 0.9 ** n)) == 1


def test_code_ema_started_at_onset_survives_a_checkpoint():
    model, hook, layer = _setup(momentum=0.5)
    wq = layer.weight_quant
    _forward_weight(layer)
    _forward_weight(layer)
    hook.after_optimizer_step(TrainState(model=model, iteration=30, total_iterations=100))
    state = wq.tracker.state_dict()
    from qat.oscillation import OscillationTracker
    resumed = OscillationTracker()
    resumed.load_state_dict(state)
    assert resumed.code_ema_started and resumed.updates == wq.tracker.updates == 1


def test_frozen_element_step_gradient_carries_the_lsq_grad_scale():
    """SPEC §5: freezing one weight must not change the scale of the layer's step gradient. The frozen
    element contributes g·code·dL/dx̂ to dL/ds, g = 1/sqrt(N·qmax) (without g, one frozen weight of a
    128×128×3×3 layer made its step gradient ~10× larger)."""
    from qat.freeze import FrozenCodes
    from qat.functional import lsq_grad_scale
    from qat.quantizer import WeightQuantizer
    torch.manual_seed(0)
    weight = torch.randn(16, 8, 3, 3, requires_grad=True)
    wq = WeightQuantizer(4, weight.shape)
    wq.init_step(weight.detach())
    wq.frozen = FrozenCodes(weight.detach())
    idx = (3, 2, 1, 0)
    mask = torch.zeros_like(wq.frozen.mask)
    mask[idx] = True
    wq.frozen.freeze(mask, torch.full_like(weight, 5.0))
    grad_out = torch.randn_like(weight)
    (wq(weight) * grad_out).sum().backward()
    # reference: LSQ's step gradient with the frozen element's term replaced by its code
    s = wq.step.detach()
    v = weight.detach() / s
    q = torch.clamp(torch.round(v), wq.qmin, wq.qmax)
    inside = (v >= wq.qmin) & (v <= wq.qmax)
    term = torch.where(inside, torch.round(v) - v, q)
    term[idx] = 5.0
    g = lsq_grad_scale(weight.numel(), wq.qmax)
    torch.testing.assert_close(wq.step.grad, g * (grad_out * term).sum())
    assert float(weight.grad[idx]) == 0.0


def test_freezing_pins_code_and_stops_gradient_and_is_permanent():
    model, hook, layer = _setup()
    wq = layer.weight_quant
    idx = (1, 2, 0, 2)
    s = float(wq.step.detach())
    _set_code(layer, idx, 3, s)
    _forward_weight(layer)
    _forward_weight(layer)
    wq.tracker.frequency[idx] = 0.5          # pretend it oscillated around code 3
    hook.after_optimizer_step(TrainState(model=model, iteration=50, total_iterations=100))
    assert bool(wq.frozen.mask[idx]) and float(wq.frozen.codes[idx]) == 3.0
    s = wq.step.detach()
    for latent in (-10.0, 0.0, 0.3):             # the latent value no longer matters
        with torch.no_grad():
            layer.weight[idx] = latent
        assert float(_forward_weight(layer)[idx].detach()) == pytest.approx(3.0 * float(s))
    # gradient: none for the frozen latent weight, full STE gradient for in-range others; step still learns
    with torch.no_grad():
        layer.weight[idx] = 0.3 * s
    layer.weight.grad = None
    g = torch.randn_like(layer.weight)
    (_forward_weight(layer) * g).sum().backward()
    assert float(layer.weight.grad[idx]) == 0.0
    v = layer.weight.detach() / s
    inside = (v >= wq.qmin) & (v <= wq.qmax)
    inside[idx] = False
    torch.testing.assert_close(layer.weight.grad[inside], g[inside])
    assert wq.step.grad is not None and float(wq.step.grad.abs()) > 0
    # frequency decays below any threshold: still frozen, same code
    wq.tracker.frequency.zero_()
    hook.after_optimizer_step(TrainState(model=model, iteration=99, total_iterations=100))
    assert bool(wq.frozen.mask[idx]) and float(wq.frozen.codes[idx]) == 3.0
    # state round trip
    state = hook.state_dict()
    fresh = FreezeHook(bits=3)
    fresh.model = model
    wq.frozen = None
    fresh.load_state_dict(state)
    assert bool(wq.frozen.mask[idx]) and float(wq.frozen.codes[idx]) == 3.0


def test_recipe_builds_the_hook():
    hooks = make_hooks(get_recipe("freeze"), 3, 0, MethodConfig())
    assert sum(isinstance(h, FreezeHook) for h in hooks) == 1
