"""Model registry: every classifier of the paper's Tables II/III builds at proxy and paper size, converts
to quantized layers completely, and survives BatchNorm folding with unchanged outputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qat.models import build_model, input_shape, model_names
from qat.modules import QUANT_LAYERS, convert, quant_layers
from qat.prepare.bn_fold import find_conv_bn_pairs, fold_batchnorm

PAPER_MODELS = {"mobilenetv1", "mobilenetv2", "mobilenetv3_large", "mobilenext_x1.4", "efficientnet_b0",
                "shufflenetv2_1.0", "resnet18", "seresnet50", "vgg16"}
SLOW_AT_PAPER_SIZE = {"vgg16"}  # ~9 s to build (138 M parameters) and run at 224 px on one thread


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _plain_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]


def test_registry_holds_the_paper_models():
    assert set(model_names()) == PAPER_MODELS
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet19")
    with pytest.raises(ValueError, match="unknown model size"):
        build_model("resnet18", "huge")


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_proxy_forward(name):
    model = build_model(name, "proxy")
    x = torch.randn(2, *input_shape("proxy"))
    assert input_shape("proxy") == (1, 32, 32)
    out = model.train()(x)  # train mode: BatchNorm sees batch statistics (needs > 1 value per channel)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    assert build_model(name, "proxy", num_classes=7).eval()(x).shape == (2, 7)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_AT_PAPER_SIZE else n
                                  for n in sorted(PAPER_MODELS)])
def test_paper_forward(name):
    model = build_model(name, "paper").eval()
    assert input_shape("paper") == (3, 224, 224)
    with torch.no_grad():
        out = model(torch.randn(1, *input_shape("paper")))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


def test_mobilenext_matches_the_paper_size():
    # Zhou et al. 2020, Table 1 / README: MobileNeXt-1.4 has 6.1 M parameters and 590 M multiply-adds.
    model = build_model("mobilenext_x1.4", "paper")
    params = sum(p.numel() for p in model.parameters())
    assert 6.0e6 <= params <= 6.2e6
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, 224, 224))
    assert 570e6 <= counter.get_total_flops() / 2 <= 610e6


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_convert_replaces_every_conv_and_linear(name, monkeypatch):
    monkeypatch.setenv("QAT_FUSED", "0")  # eager fake-quant: this test is about structure, not kernel compiling
    model = build_model(name, "proxy")
    plain = _plain_layers(model)
    assert plain, "model has no Conv2d/Linear"
    convert(model, bits=4)
    assert _plain_layers(model) == []
    converted = [n for n, _ in quant_layers(model)]
    assert converted == plain  # same layers, same order
    assert all(isinstance(model.get_submodule(n), QUANT_LAYERS) for n in plain)
    bits = [layer.weight_quant.bits for _, layer in quant_layers(model)]
    assert bits[0] == bits[-1] == 8 and set(bits[1:-1]) <= {4}
    # the quantized model runs once its steps are initialised (LSQ weight init, one calibration batch)
    x = torch.randn(4, *input_shape("proxy"))
    model.eval()
    for _, layer in quant_layers(model):
        layer.weight_quant.init_step(layer.weight)
        layer.input_quant.observing = True
    with torch.no_grad():
        model(x)
    for _, layer in quant_layers(model):
        layer.input_quant.observing = False
        layer.input_quant.init_step_from_range()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> int:
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                    m.bias.copy_(0.2 * torch.randn(c, generator=gen))
            n += 1
    return n


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_bn_fold_preserves_outputs(name):
    gen = torch.Generator().manual_seed(1)
    model = build_model(name, "proxy").eval()
    n_bn = _randomize_bn(model, gen)
    x = torch.randn(4, *input_shape("proxy"), generator=gen)
    with torch.no_grad():
        ref = model(x)
    folded = fold_batchnorm(model, x)
    assert folded == n_bn  # every BatchNorm of these models follows a conv
    assert find_conv_bn_pairs(model, x) == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
