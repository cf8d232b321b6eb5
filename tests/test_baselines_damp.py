"""Damp (SPEC §7): the loss equals a hand computation, follows its schedule, and acts on weights only."""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_baselines_helpers import eager_quantizer, tiny_cnn  # noqa: E402,F401

from qat.baselines.damp import DampeningHook, dampening_loss, dampening_weight  # noqa: E402
from qat.hooks import TrainState  # noqa: E402
from qat.modules import quant_layers  # noqa: E402
from qat.recipes import MethodConfig, get_recipe, make_hooks  # noqa: E402


def test_schedule_zero_then_cosine_up_to_final():
    assert dampening_weight(0.0) == 0.0
    assert dampening_weight(0.2499) == 0.0
    assert dampening_weight(0.25) == pytest.approx(0.0, abs=1e-15)
    assert dampening_weight(1.0) == pytest.approx(0.1)
    assert dampening_weight(0.625) == pytest.approx(0.05)          # half way through the cosine
    # reference: CosineTempDecay(temp_range=(0, 0.1), rel_decay_start=0.25)
    for p in (0.3, 0.5, 0.8, 0.95):
        assert dampening_weight(p) == pytest.approx(0.1 + 0.5 * (0 - 0.1) * (1 + math.cos(math.pi * (p - 0.25) / 0.75)))
    grid = [dampening_weight(i / 100) for i in range(101)]
    assert all(b >= a for a, b in zip(grid, grid[1:]))


def _hand_case():
    # 3-bit grid [-4, 3], s = 0.5 → clamp range [-2.0, 1.5]; weight [2 out, 1, 1, 2]
    w = torch.tensor([[0.3, 1.9], [-2.6, 0.74]]).view(2, 1, 1, 2).requires_grad_(True)
    # element by element: w_q = 0.5 (0.6→1), 1.5 (3.8→4→3), -2.0 (-5.2→-5→-4), 0.5 (1.48→1)
    # squared error vs clamp(w): 0.04, 0, 0, 0.0576
    return w, torch.tensor(0.5, requires_grad=True)


def test_loss_matches_hand_computation_and_aggregations():
    w, s = _hand_case()
    assert float(dampening_loss(w, s, -4, 3, "kernel_mean").detach()) == pytest.approx((0.04 + 0.0576) / 2)
    assert float(dampening_loss(w, s, -4, 3, "sum").detach()) == pytest.approx(0.0976)
    assert float(dampening_loss(w, s, -4, 3, "mean").detach()) == pytest.approx(0.0244)
    with pytest.raises(ValueError):
        dampening_loss(w, s, -4, 3, "median")


def test_gradient_reaches_weights_only():
    w, s = _hand_case()
    dampening_loss(w, s, -4, 3, "kernel_mean").backward()
    # d/dw (w_q − w)² = −2(w_q − w), times 1/2 from the mean over the 2 kernel positions; clipped → 0
    torch.testing.assert_close(w.grad.flatten(), torch.tensor([-0.2, 0.0, 0.0, 0.24]))
    assert s.grad is None


def test_reference_bounds_give_the_step_no_gradient_either():
    # Nagel's code keeps the clamp bounds s·qmin, s·qmax attached to the scale; the gradient they
    # carry is 2(s·q − w_q)·q on clipped elements, identically zero: detaching s changes nothing.
    w, s = _hand_case()
    w_q = (s * torch.clamp(torch.round(w / s), -4, 3)).detach()
    loss = ((w_q - torch.min(torch.max(w, s * -4), s * 3)) ** 2).sum(0).mean()
    loss.backward()
    assert float(s.grad) == 0.0


def _state(model, iteration, total=100):
    return TrainState(model=model, iteration=iteration, total_iterations=total)


@pytest.mark.parametrize("per_channel", [False, True])
def test_hook_is_off_then_equals_lambda_times_per_layer_sum(per_channel):
    # first conv and the linear stay at 8 bits
    model = tiny_cnn(bits=3, quantize_first_last=False, per_channel=per_channel)
    hook = DampeningHook(final_weight=0.1)
    assert hook.extra_loss(_state(model, 24)) is None       # t/T < 25%: no term at all
    expected = 0.0
    for _, layer in quant_layers(model):                     # all quantized layers, as the reference
        wq, w = layer.weight_quant, layer.weight.detach()
        s = wq.step.detach()
        err = (s * torch.clamp(torch.round(w / s), wq.qmin, wq.qmax) - torch.clamp(w, s * wq.qmin, s * wq.qmax)) ** 2
        expected += sum(float(err[c].mean()) for c in range(err.shape[0]))
    loss = hook.extra_loss(_state(model, 100))
    assert loss.item() == pytest.approx(0.1 * expected, rel=1e-5)
    assert hook.extra_loss(_state(model, 70)).item() == pytest.approx(dampening_weight(0.7) * expected, rel=1e-5)
    loss.backward()
    for _, layer in quant_layers(model):
        assert layer.weight_quant.step.grad is None
        assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0
        assert layer.input_quant.step.grad is None
    low = DampeningHook(max_bits=4)
    low_expected = sum(dampening_loss(layer.weight, layer.weight_quant.step, layer.weight_quant.qmin,
                                      layer.weight_quant.qmax).item() for _, layer in quant_layers(model)
                       if layer.weight_quant.bits <= 4)
    assert low.extra_loss(_state(model, 100)).item() == pytest.approx(0.1 * low_expected, rel=1e-5)
    assert low_expected < expected


def test_one_sgd_step_moves_in_range_weights_half_way_to_their_level():
    # kernel_mean: ∂L/∂w = λ·(−2)(w_q − w)/M with M = elements per output channel; an SGD step of
    # lr = M/(4λ) therefore moves every in-range weight exactly half way to its level.
    model = tiny_cnn(bits=3)
    layer = dict(quant_layers(model))["2"]
    wq = layer.weight_quant
    w0, s = layer.weight.detach().clone(), wq.step.detach()
    target = s * torch.clamp(torch.round(w0 / s), wq.qmin, wq.qmax)
    inside = (w0 >= s * wq.qmin) & (w0 <= s * wq.qmax)
    m = w0[0].numel()
    opt = torch.optim.SGD([layer.weight], lr=m / (4 * 0.1))
    DampeningHook(final_weight=0.1).extra_loss(_state(model, 100)).backward()
    opt.step()
    w1 = layer.weight.detach()
    torch.testing.assert_close(w1[inside] - target[inside], 0.5 * (w0[inside] - target[inside]), rtol=1e-4, atol=1e-6)
    assert torch.equal(w1[~inside], w0[~inside])
    assert float((w0 - target).abs().sum()) > 0


def test_recipe_builds_the_hook():
    hooks = make_hooks(get_recipe("damp"), 4, 0, MethodConfig(damp_weight=0.2))
    damp = [h for h in hooks if isinstance(h, DampeningHook)]
    assert len(damp) == 1 and damp[0].final_weight == 0.2
