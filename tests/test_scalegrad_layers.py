"""`scalegrad_layers` (DEVIATIONS 2a): ScaleGrad's gradient changes on every quantized layer (SPEC §2) or on the
low-bit layers only, the 8-bit first / last layers left to LSQ — at both places a run sets its gradient mode
(the prologue and a branch's or resume's module tree) and in the lr-matched control."""
import pytest
import torch
from torch import nn

from qat.baselines.lr_matched import WeightGradScaleHook
from qat.hooks import TrainState
from qat.loop import qat_step
from qat.modules import convert, quant_layers, set_gradient_mode
from qat.prepare.pipeline import PrologueOptions, quantize_prologue, scalegrad_max_bits
from qat.recipes import MethodConfig, get_recipe, make_hooks, method_keys


def three_convs(bits=4):
    """First and last layers at 8 bits (the default placement), the middle one at `bits`."""
    return convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)),
                   bits)


def modes(model):
    return {name: (layer.weight_quant.bits, layer.weight_quant.dist_k, layer.weight_quant.pulse_delta,
                   layer.input_quant.pulse_delta) for name, layer in quant_layers(model)}


def test_low_bit_scope_leaves_the_8_bit_layers_to_lsq():
    model = three_convs(4)
    set_gradient_mode(model, 0.1, 1.0, max_bits=4)
    assert modes(model) == {"0": (8, None, None, None), "2": (4, 1.0, 0.1, 0.1), "4": (8, None, None, None)}
    set_gradient_mode(model, 0.1, 1.0)  # SPEC §2: every layer
    assert modes(model) == {"0": (8, 1.0, 0.1, 0.1), "2": (4, 1.0, 0.1, 0.1), "4": (8, 1.0, 0.1, 0.1)}


@pytest.mark.parametrize("layers, expected_8bit", [("all", (8, 1.0, 0.1, 0.1)), ("low-bit", (8, None, None, None))])
def test_both_call_sites_follow_the_method_setting(layers, expected_8bit):
    recipe, methods = get_recipe("scalegrad"), MethodConfig(scalegrad_layers=layers)
    example = torch.randn(2, 3, 12, 12)
    prologue = PrologueOptions(cle=False, bias_correction=False)
    in_prologue = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    quantize_prologue(in_prologue, 3, [example], prologue, **recipe.quantizer(methods))
    built = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    recipe.build_structure(built, 3, example, prologue, methods)
    for model in (in_prologue, built):
        assert modes(model) == {"0": expected_8bit, "2": (3, 1.0, 0.1, 0.1), "4": expected_8bit}


def test_the_setting_is_part_of_scalegrad_runs_identity_only():
    for name in ("scalegrad", "pulsesmooth", "distance", "scalegrad+ead", "ours", "scalegrad+ead+adaround",
                 "lsq-lr-matched"):
        assert "scalegrad_layers" in method_keys(get_recipe(name)), name
    for name in ("lsq", "perchannel", "damp", "freeze", "redyolo"):
        assert "scalegrad_layers" not in method_keys(get_recipe(name)), name
    with pytest.raises(ValueError, match="scalegrad_layers"):
        scalegrad_max_bits("8-bit", 4)


def test_lr_matched_control_scales_the_same_layers_as_scalegrad():
    (hook,) = [h for h in make_hooks(get_recipe("lsq-lr-matched"), 4, 0, MethodConfig(scalegrad_layers="low-bit"))
               if isinstance(h, WeightGradScaleHook)]
    grads = []
    for hooks in ([], [hook]):
        torch.manual_seed(0)
        model = three_convs(4)
        for _, layer in quant_layers(model):
            layer.weight_quant.step.data.fill_(0.05)
            layer.input_quant.step.data.fill_(0.05)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the gradients stay to be compared
        x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
        qat_step(model(x).square().mean(), optimizer, hooks, TrainState(model))
        grads.append({name: layer.weight.grad.clone() for name, layer in quant_layers(model)})
    torch.testing.assert_close(grads[1]["2"], grads[0]["2"] * hook.scale)  # the low-bit layer: scaled
    for name in ("0", "4"):                                                # the 8-bit ones: LSQ's
        torch.testing.assert_close(grads[1][name], grads[0][name])
