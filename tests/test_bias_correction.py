"""Empirical bias correction (SPEC §8 step 4, qat/prepare/bias_correction.py)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qat.modules import convert, quant_layers
from qat.prepare.bias_correction import correct_bias


def init_weight_steps(model):
    for _, layer in quant_layers(model):
        layer.weight_quant.init_step(layer.weight)


def relu_inputs(n: int, shape, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.relu(torch.randn(shape, generator=g) + 0.5) for _ in range(n)]   # non-zero mean


def set_weight_quant(model, enabled: bool):
    for _, layer in quant_layers(model):
        layer.weight_quant.enabled = enabled
        layer.input_quant.enabled = False


def fp_reference(model) -> nn.Module:
    """The FP model before correction: a copy with every quantizer off."""
    ref = copy.deepcopy(model)
    for _, layer in quant_layers(ref):
        layer.weight_quant.enabled = layer.input_quant.enabled = False
    return ref


@torch.no_grad()
def mean_output_error(model, fp_ref, batches, signed: bool = False) -> torch.Tensor:
    """|mean over data of (out with quantized weights − out of the uncorrected FP model)| per channel."""
    diffs = []
    set_weight_quant(model, True)
    for x in batches:
        d = model(x) - fp_ref(x)
        diffs.append(d.transpose(0, 1).reshape(d.shape[1], -1) if d.dim() == 4 else d.T)
    m = torch.cat(diffs, 1).mean(1)
    return m if signed else m.abs()


def quantized_conv(per_channel: bool, bias: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = convert(nn.Sequential(nn.Conv2d(16, 8, 3, padding=1, bias=bias)), 3, quantize_first_last=True,
                    per_channel=per_channel)
    init_weight_steps(model)
    return model.eval()


@pytest.mark.parametrize("per_channel", [False, True])
def test_bias_correction_lowers_mean_output_error_3bit_conv(per_channel):
    model = quantized_conv(per_channel)
    calib = relu_inputs(8, (8, 16, 10, 10), seed=1)
    test = relu_inputs(8, (8, 16, 10, 10), seed=2)
    ref = fp_reference(model)
    before = mean_output_error(model, ref, test)

    report = correct_bias(model, calib, max_batches=None)

    after = mean_output_error(model, ref, test)
    assert report["batches"] == 8 and report["layers"] == 1 and report["biases_added"] == ["0"] and model[0].bias is not None
    assert float(after.mean()) < 0.1 * float(before.mean()), (before, after)
    assert float(after.max()) < 0.2 * float(before.max())
    # on the calibration data itself the mean error is removed exactly (same inputs, one layer)
    assert float(mean_output_error(model, ref, calib).max()) < 1e-5
    # per-channel / per-tensor steps untouched
    assert model[0].weight_quant.per_channel == per_channel


def test_existing_bias_is_shifted_by_the_mean_error():
    model = quantized_conv(False, bias=True)
    calib = relu_inputs(4, (4, 16, 8, 8), seed=3)
    b0 = model[0].bias.detach().clone()
    expected = mean_output_error(model, fp_reference(model), calib, signed=True)
    report = correct_bias(model, calib)
    assert report["biases_added"] == []
    assert torch.allclose(model[0].bias, b0 - expected, atol=1e-6)


def test_linear_and_sequential_layers_and_flags_restored():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(4, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1, groups=12),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 6, bias=False))
    convert(model, 3, quantize_first_last=True)
    init_weight_steps(model)
    layers = [layer for _, layer in quant_layers(model)]
    with torch.no_grad():
        for layer in layers:                 # activation quantizers were "calibrated" and are on
            layer.input_quant.step.fill_(0.1)
    model[6].input_quant.enabled = True
    model[2].input_quant.enabled = False     # a deliberately odd state that must survive
    model.train()
    flags = [(l.weight_quant.enabled, l.input_quant.enabled, l.input_quant.observing) for l in layers]
    calib = relu_inputs(4, (8, 4, 8, 8), seed=6)
    test = relu_inputs(4, (8, 4, 8, 8), seed=7)
    ref = fp_reference(model)
    before = mean_output_error(model, ref, test)
    for layer, f in zip(layers, flags):
        layer.weight_quant.enabled, layer.input_quant.enabled, layer.input_quant.observing = f

    report = correct_bias(model, calib)

    assert model.training
    assert [(l.weight_quant.enabled, l.input_quant.enabled, l.input_quant.observing) for l in layers] == flags
    assert report["layers"] == 3 and report["biases_added"] == ["6"]
    assert list(report["mean_abs_correction"]) == ["0", "2", "6"]    # execution order
    after = mean_output_error(model.eval(), ref, test)
    assert float(after.mean()) < 0.5 * float(before.mean()), (before, after)


def test_non_sequential_mode_matches_sequential_on_one_layer():
    a, b = quantized_conv(True), quantized_conv(True)
    calib = relu_inputs(6, (4, 16, 6, 6), seed=8)
    ra, rb = correct_bias(a, calib), correct_bias(b, iter(calib), sequential=False)
    assert ra["batches"] == rb["batches"] == 4                      # default max_batches
    assert not rb["sequential"] and torch.allclose(a[0].bias, b[0].bias)
