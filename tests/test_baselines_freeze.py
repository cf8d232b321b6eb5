"""Freeze baseline (SPEC §5, qat.freeze): threshold schedule; an oscillating weight gets frozen to
round(EMA of its codes); freezing pins the code and stops the latent weight's gradient; frozen stays
frozen."""
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


def test_oscillating_weight_is_frozen_to_rounded_code_ema():
    model, hook, layer = _setup(momentum=0.5)
    wq = layer.weight_quant
    s = float(wq.step.detach())
    idx = (0, 0, 1, 1)
    with torch.no_grad():
        layer.weight[idx] = 1.4 * s          # code 1
    _forward_weight(layer)                   # first call initialises the tracker
    # hand simulation of the code EMA (momentum 0.5) and the oscillation frequency
    ema, freq, codes = 1.0, 0.0, [2, 1, 2, 1, 2]
    last_dir, prev = 0, 1
    for c in codes:
        with torch.no_grad():
            layer.weight[idx] = (c + (0.4 if c == 1 else -0.4)) * s
        _forward_weight(layer)
        d = (c > prev) - (c < prev)
        osc = 1.0 if d != 0 and d == -last_dir else 0.0
        freq = 0.5 * osc + 0.5 * freq
        last_dir, prev = (d if d != 0 else last_dir), c
        ema = 0.5 * c + 0.5 * ema
    assert float(wq.tracker.frequency[idx]) == pytest.approx(freq)
    assert float(wq.tracker.int_ema[idx]) == pytest.approx(ema)
    assert freq > 0.1
    # before 25% of training nothing is frozen, whatever the frequency
    hook.after_optimizer_step(TrainState(model=model, iteration=10, total_iterations=100))
    assert not bool(wq.frozen.mask.any())
    hook.after_optimizer_step(TrainState(model=model, iteration=30, total_iterations=100))
    assert bool(wq.frozen.mask[idx])
    assert int(wq.frozen.mask.sum()) == 1   # every other weight kept its code: frequency 0
    assert float(wq.frozen.codes[idx]) == round(ema) == 2


def test_freezing_pins_code_and_stops_gradient_and_is_permanent():
    model, hook, layer = _setup()
    wq = layer.weight_quant
    idx = (1, 2, 0, 2)
    _forward_weight(layer)
    wq.tracker.frequency[idx] = 0.5          # pretend it oscillated; its code EMA says 3
    wq.tracker.int_ema[idx] = 2.6
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
