"""ScaleGrad's parts apart (issue 17, item 4): PulseSmooth-only and distance-only recipes set exactly their
part of the gradient mode, and the lr-matched LSQ control scales weight gradients by E[exp(-kΔ)]."""
import math

import pytest
import torch

from qat.baselines.lr_matched import WeightGradScaleHook, mean_distance_factor
from qat.hooks import TrainState
from qat.loop import qat_step
from qat.modules import quant_layers
from qat.recipes import MethodConfig, get_recipe, make_hooks
from test_baselines_helpers import eager_quantizer, tiny_cnn  # noqa: F401


@pytest.mark.parametrize("recipe, mode", [("lsq", (None, None)), ("pulsesmooth", (0.2, None)),
                                          ("distance", (None, 3.0)), ("scalegrad", (0.2, 3.0)),
                                          ("ours", (0.2, 3.0)), ("lsq-lr-matched", (None, None))])
def test_each_recipe_sets_its_part_of_scalegrad(recipe, mode):
    assert get_recipe(recipe).gradient_mode(MethodConfig(pulse_delta=0.2, dist_k=3.0)) == mode


def test_mean_distance_factor_is_the_average_of_exp_minus_k_delta_within_a_bin():
    assert mean_distance_factor(1.0) == pytest.approx(0.787, abs=5e-4)  # ScaleGrad's ~21 % lower weight lr
    # weights spread evenly over bins: the mean of ScaleGrad's factor exp(-kΔ) over them
    v = torch.linspace(-3.5, 3.5, 700_001, dtype=torch.float64)
    for k in (0.5, 1.0, 4.0):
        assert float(torch.exp(-k * (v - v.round()).abs()).mean()) == pytest.approx(mean_distance_factor(k), rel=1e-4)
    with pytest.raises(ValueError):
        mean_distance_factor(0.0)


def test_lr_matched_control_scales_every_quantized_weight_gradient():
    hooks = make_hooks(get_recipe("lsq-lr-matched"), 3, 0, MethodConfig(dist_k=1.0))
    scale_hooks = [h for h in hooks if isinstance(h, WeightGradScaleHook)]
    assert len(scale_hooks) == 1 and scale_hooks[0].scale == pytest.approx((1 - math.exp(-0.5)) / 0.5)
    grads = []
    for hooks_used in ([], scale_hooks):
        model = tiny_cnn(bits=3)
        model.train()
        x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the gradients stay to be compared
        qat_step(model(x).square().mean(), optimizer, hooks_used, TrainState(model))
        grads.append([layer.weight.grad.clone() for _, layer in quant_layers(model)]
                     + [layer.weight_quant.step.grad.clone() for _, layer in quant_layers(model)])
    n = len(grads[0]) // 2
    for plain, scaled in zip(grads[0][:n], grads[1][:n]):  # weights: scaled
        torch.testing.assert_close(scaled, plain * scale_hooks[0].scale)
    for plain, scaled in zip(grads[0][n:], grads[1][n:]):  # step sizes: untouched
        torch.testing.assert_close(scaled, plain)
