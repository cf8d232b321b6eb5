"""Cross-Layer Equalization and high-bias absorption (SPEC §8 step 2, qat/prepare/cle.py)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from qat.modules import set_submodule
from qat.prepare.cle import (absorb_high_bias, capture_bn_stats, equalize, find_cle_pairs, in_ranges,
                             out_ranges)


def rel(y, ref):
    y, ref = y.detach(), ref.detach()
    return float((y - ref).abs().max() / ref.abs().max())


def spread_channels(conv: nn.Module, gen: torch.Generator, decades: float = 2.0) -> None:
    """Scale the output channels of `conv` by 10^U(-decades, decades): badly balanced ranges."""
    f = 10 ** ((torch.rand(conv.weight.shape[0], generator=gen, dtype=torch.float64) * 2 - 1) * decades)
    with torch.no_grad():
        conv.weight.mul_(f.view(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight))
        conv.bias.mul_(f.to(conv.bias))


def dfq_precision(r1: torch.Tensor, r2: torch.Tensor) -> float:
    """DFQ's objective for a pair: Σ_i (r1_i / max r1)(r2_i / max r2)."""
    return float(((r1 / r1.max()) * (r2 / r2.max())).sum())


def log_spread(r: torch.Tensor) -> float:
    return float(r.log10().max() - r.log10().min())


def relu_chain(dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 4, 1)).to(dtype).eval()


class InvertedResidual(nn.Module):
    """MobileNetV2 block on a folded model: pw → ReLU6 → dw → ReLU6 → pwl (+ x when shapes allow)."""

    def __init__(self, cin: int, cout: int, expand: int = 3, stride: int = 1):
        super().__init__()
        mid = cin * expand
        self.conv_pw = nn.Conv2d(cin, mid, 1)
        self.act1 = nn.ReLU6(inplace=True)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid)
        self.act2 = nn.ReLU6(inplace=True)
        self.conv_pwl = nn.Conv2d(mid, cout, 1)
        self.skip = cin == cout and stride == 1

    def forward(self, x):
        y = self.conv_pwl(self.act2(self.conv_dw(self.act1(self.conv_pw(x)))))
        return x + y if self.skip else y


class TinyMobileNetV2(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 3, padding=1)
        self.stem_act = nn.ReLU6(inplace=True)
        self.b1 = InvertedResidual(8, 6, stride=2)
        self.b2 = InvertedResidual(6, 6)          # skip: b1.conv_pwl → b2.conv_pw must be reverted
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(self.pool(self.b2(self.b1(self.stem_act(self.stem(x))))).flatten(1))


def tiny_mbv2(dtype=torch.float64) -> TinyMobileNetV2:
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(1)
    m = TinyMobileNetV2().to(dtype).eval()
    for conv in (m.stem, m.b1.conv_pw, m.b1.conv_dw, m.b2.conv_pw, m.b2.conv_dw):
        spread_channels(conv, gen, 1.0)
    return m


def relu6_to_relu(model: nn.Module, names) -> nn.Module:
    model = copy.deepcopy(model)
    for n in names:
        set_submodule(model, n, nn.ReLU())
    return model


def test_relu_chain_keeps_function_and_equalizes_ranges():
    model = relu_chain()
    gen = torch.Generator().manual_seed(0)
    spread_channels(model[0], gen)
    spread_channels(model[2], gen)
    ref = copy.deepcopy(model)
    x, x_test = torch.randn(4, 3, 12, 12, dtype=torch.float64), torch.randn(4, 3, 12, 12, dtype=torch.float64)
    before = [dfq_precision(out_ranges(model[0]), in_ranges(model[2])),
              dfq_precision(out_ranges(model[2]), in_ranges(model[4]))]

    report = equalize(model, x)

    assert (report["candidates"], report["pairs_kept"], report["pairs_reverted"]) == (2, 2, 0)
    assert report["relu6_replaced"] == 0 and report["converged"]
    assert rel(model(x_test), ref(x_test)) <= 1e-5           # float64: ~1e-15 in practice
    for a, b in ((0, 2), (2, 4)):                              # r1 ≈ r2 channel by channel
        r1, r2 = out_ranges(model[a]), in_ranges(model[b])
        assert (r1 / r2).log().abs().max() < 1e-3
    after = [dfq_precision(out_ranges(model[0]), in_ranges(model[2])),
             dfq_precision(out_ranges(model[2]), in_ranges(model[4]))]
    assert all(a > 1.1 * b for a, b in zip(after, before)), (before, after)
    # the 4-decade spread of layer 0's channel ranges is about halved (sqrt(r1·r2), r2 ≈ balanced)
    assert log_spread(out_ranges(model[0])) < 0.6 * log_spread(out_ranges(ref[0]))


def test_relu_chain_float32_keeps_function():
    model = relu_chain(torch.float32)
    ref = copy.deepcopy(model)
    x = torch.randn(4, 3, 12, 12)
    report = equalize(model, x)
    assert report["pairs_kept"] == 2
    assert rel(model(x), ref(x)) <= 1e-5
    assert report["rel_error_vs_relu"] <= 1e-5


def test_mobilenetv2_like_depthwise_triples():
    model = tiny_mbv2()
    x, x_test = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64)
    orig = copy.deepcopy(model)

    report = equalize(model, x, relu6="relu")

    kept = {(p["conv1"], p["conv2"]) for p in report["pairs"]}
    assert kept == {("stem", "b1.conv_pw"), ("b1.conv_pw", "b1.conv_dw"), ("b1.conv_dw", "b1.conv_pwl"),
                    ("b2.conv_pw", "b2.conv_dw"), ("b2.conv_dw", "b2.conv_pwl")}
    assert [(p["conv1"], p["conv2"]) for p in report["reverted"]] == [("b1.conv_pwl", "b2.conv_pw")]
    assert report["relu6_replaced"] == 5
    assert sorted(report["relu6_names"]) == ["b1.act1", "b1.act2", "b2.act1", "b2.act2", "stem_act"]
    assert all(isinstance(getattr(b, a), nn.ReLU) and not isinstance(getattr(b, a), nn.ReLU6)
               for b in (model.b1, model.b2) for a in ("act1", "act2"))
    ref = relu6_to_relu(orig, report["relu6_names"])
    assert rel(model(x_test), ref(x_test)) <= 1e-5
    assert rel(model(x_test), orig(x_test)) > 1e-3           # ReLU6 → ReLU did change this net
    # conv–dw–conv triple: per channel, pw output range = dw range = pwl input range (cube-root point)
    for b in (model.b1, model.b2):
        r_pw, r_pwl = out_ranges(b.conv_pw), in_ranges(b.conv_pwl)
        r_dw_in, r_dw_out = in_ranges(b.conv_dw), out_ranges(b.conv_dw)
        assert torch.allclose(r_dw_in, r_dw_out)
        assert (r_pw / r_dw_in).log().abs().max() < 1e-3 and (r_dw_out / r_pwl).log().abs().max() < 1e-3


class ResidualToy(nn.Module):
    """conv0 → ReLU6 → x;  y = x + relu(conv1(x));  out = conv2(y), plus a two-consumer tensor."""

    def __init__(self):
        super().__init__()
        self.conv0, self.act0 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU6()
        self.conv1, self.act1 = nn.Conv2d(6, 6, 3, padding=1), nn.ReLU()
        self.conv2 = nn.Conv2d(6, 4, 1)
        self.head_a, self.head_b = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = self.act0(self.conv0(x))
        y = self.conv2(x + self.act1(self.conv1(x)))
        return torch.cat([self.head_a(y), self.head_b(y)], 1)   # y has two module consumers: no candidate


def test_residual_branch_pair_is_reverted():
    torch.manual_seed(2)
    model = ResidualToy().double().eval()
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    found = find_cle_pairs(model, x)
    assert found["candidates"] == 1 and not found["kept"]
    (pair, err), = found["reverted"]
    assert (pair.conv1, pair.conv2, pair.acts) == ("conv0", "conv1", ("act0",)) and err > 1e-3

    report = equalize(model, x)
    assert (report["pairs_kept"], report["pairs_reverted"], report["relu6_replaced"]) == (0, 1, 0)
    assert type(model.act0) is nn.ReLU6                       # put back with its pair
    for p_new, p_old in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p_new, p_old)


def test_probe_in_place_float32_leaves_model_unchanged():
    model = tiny_mbv2(torch.float32)
    ref = copy.deepcopy(model)
    x = torch.randn(2, 2, 8, 8)
    found = find_cle_pairs(model, x, probe_dtype=None)
    assert len(found["kept"]) == 5 and len(found["reverted"]) == 1
    assert type(model.b1.act1) is nn.ReLU6
    for p_new, p_old in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p_new, p_old)


def absorb_net() -> nn.Sequential:
    """conv1 (small weights, large bias) → ReLU → depthwise 3×3 (no padding) → ReLU → 1×1 conv."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8), nn.ReLU(),
                      nn.Conv2d(8, 5, 1)).double().eval()
    with torch.no_grad():
        m[0].weight.uniform_(-0.05, 0.05)
        m[0].bias.uniform_(4, 6)
    return m


def test_high_bias_absorption_with_bn_stats_is_exact():
    model = absorb_net()
    ref = copy.deepcopy(model)
    x = torch.rand(4, 4, 10, 10, dtype=torch.float64) * 2 - 1     # |x| ≤ 1: pre-activation ≥ bias − 1.8
    b1 = model[0].bias.detach().clone()
    stats = {"0": {"beta": b1.clone(), "gamma": torch.ones(8, dtype=torch.float64)}}   # c = bias − 3
    c = (b1 - 3).clamp_min(0)
    assert float((model[0](x).detach() - c.view(1, -1, 1, 1)).min()) > 0  # exactness condition holds

    report = absorb_high_bias(model, x, bn_stats=stats)

    assert report["per_layer"]["0"]["source"] == "bn" and report["per_layer"]["0"]["channels"] == 8
    assert torch.allclose(model[0].bias, b1 - c)
    assert torch.allclose(stats["0"]["beta"], b1 - c)
    x_test = torch.rand(4, 4, 10, 10, dtype=torch.float64) * 2 - 1
    assert rel(model(x_test), ref(x_test)) <= 1e-10


def test_high_bias_absorption_empirical_is_exact_where_preactivation_exceeds_c():
    model = absorb_net()
    with torch.no_grad():   # each channel reads one input pixel: pre-activation uniform on bias ± 0.5
        model[0].weight.zero_()
        for o in range(8):
            model[0].weight[o, o % 4, 1, 1] = 0.5
    ref = copy.deepcopy(model)
    x = torch.rand(8, 4, 10, 10, dtype=torch.float64) * 2 - 1
    pre = model[0](x).detach().transpose(0, 1).reshape(8, -1)
    c = (pre.mean(1) - 3 * pre.std(1, unbiased=False)).clamp_min(0)
    assert bool((c > 0).all()) and bool((pre.min(1).values >= c).all())
    b1 = model[0].bias.detach().clone()

    report = absorb_high_bias(model, x)   # chains found by probing; conv1→dw and dw→conv3

    assert report["chains"] == 2 and "0" in report["per_layer"]
    assert report["per_layer"]["0"]["source"] == "empirical"
    assert torch.allclose(model[0].bias, b1 - c)
    assert rel(model(x), ref(x)) <= 1e-10


def test_absorption_after_equalize_uses_scaled_bn_stats():
    """capture_bn_stats → fold → equalize(bn_stats) rescales β, |γ| with the CLE scales."""
    from qat.prepare.bn_fold import fold_batchnorm
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 4, 1)).double()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.1, 0.3)
        model[1].bias.uniform_(1, 3)
    model.eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    stats = capture_bn_stats(model, x)
    beta0, gamma0 = stats["0"]["beta"].clone(), stats["0"]["gamma"].clone()
    fold_batchnorm(model, x)
    w0 = model[0].weight.detach().clone()
    report = equalize(model, x, bn_stats=stats)
    assert report["pairs_kept"] == 1
    s = (w0.flatten(1).abs().amax(1) / model[0].weight.detach().flatten(1).abs().amax(1)).float()
    assert torch.allclose(stats["0"]["beta"], beta0 / s, rtol=1e-5)
    assert torch.allclose(stats["0"]["gamma"], gamma0 / s, rtol=1e-5)
    ab = absorb_high_bias(model, x, bn_stats=stats, pairs=report["pairs"])
    assert ab["absorbed"] == 1 and ab["per_layer"]["0"]["source"] == "bn"


def _proxy_mobilenetv2_folded():
    from qat.models import build_model
    from qat.prepare.bn_fold import fold_batchnorm
    torch.manual_seed(0)
    model = build_model("mobilenetv2", size="proxy")
    for m in model.modules():                       # random affine BN, running stats from random data
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 1, 32, 32))
    model.eval()
    x = torch.randn(2, 1, 32, 32)
    assert fold_batchnorm(model, x) == 52
    return model.double(), x.double()


def test_proxy_mobilenetv2_equalize_keeps_outputs_up_to_relu6():
    model, x = _proxy_mobilenetv2_folded()
    orig = copy.deepcopy(model)

    report = equalize(model, x, relu6="relu")

    # 16 inverted residuals × (pw→dw, dw→pwl) + stem→dw, dw→pw of the depthwise-separable block = 34
    # ReLU chains; linear pairs: DS pw → blocks.1.0.conv_pw and blocks.6.0.conv_pwl → conv_head; the 5
    # linear candidates into a block with a skip connection are reverted.
    assert (report["candidates"], report["pairs_kept"], report["pairs_reverted"]) == (41, 36, 5)
    assert report["relu6_replaced"] == 34
    assert all(p["conv2"].endswith(".conv_pw") for p in report["reverted"])
    assert report["converged"]
    ref = relu6_to_relu(orig, report["relu6_names"])
    x_test = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    assert rel(model(x_test), ref(x_test)) <= 1e-5
    ab = absorb_high_bias(model, x, pairs=report["pairs"])
    assert ab["chains"] == 34 and ab["skipped_relu6"] == 0


def test_relu6_becomes_a_channel_clip_that_keeps_the_function_exactly():
    """Default mode: ReLU6 → ChannelClip(6 / s), so even a net whose ReLU6s clip keeps its outputs."""
    from qat.prepare.channel_clip import ChannelClip
    model = tiny_mbv2()
    with torch.no_grad():                                   # make the ReLU6s clip often
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(4.0)
    x, x_test = torch.randn(3, 2, 8, 8, dtype=torch.float64), torch.randn(3, 2, 8, 8, dtype=torch.float64)
    orig = copy.deepcopy(model)
    report = equalize(model, x)
    assert report["relu6_mode"] == "clip" and report["relu6_replaced"] == 5
    clips = [getattr(b, a) for b in (model.b1, model.b2) for a in ("act1", "act2")]
    assert all(isinstance(c, ChannelClip) for c in clips)
    assert any(not torch.allclose(c.upper, torch.full_like(c.upper, 6.0)) for c in clips)  # levels follow s
    assert rel(model(x_test), orig(x_test)) <= 1e-10
    assert rel(relu6_to_relu(orig, report["relu6_names"])(x_test), orig(x_test)) > 1e-3  # ReLU would not
    for b in (model.b1, model.b2):                          # ranges still equalized (cube-root point)
        assert (out_ranges(b.conv_pw) / in_ranges(b.conv_dw)).log().abs().max() < 1e-3


def test_absorption_through_a_channel_clip_lowers_its_level():
    from qat.prepare.channel_clip import ChannelClip
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU6(), nn.Conv2d(6, 4, 1)).double()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([8.0, 5.0, 4.0, 3.0, 0.0, -1.0]))
        model[0].weight.mul_(0.01)                          # pre-activations ≈ bias ± 0.05, far above c
    x = torch.randn(8, 3, 5, 5, dtype=torch.float64)
    stats = {"0": {"beta": model[0].bias.detach().float().clone(), "gamma": torch.full((6,), 0.1)}}
    ref = copy.deepcopy(model)
    report = equalize(model, x, bn_stats=stats)
    clip = model[1]
    assert isinstance(clip, ChannelClip)
    upper_before = clip.upper.clone()
    ab = absorb_high_bias(model, x, bn_stats=stats, pairs=report["pairs"])
    assert ab["absorbed"] == 1
    assert (clip.upper <= upper_before).all() and (clip.upper >= 0).all()
    assert (clip.upper < upper_before).any()
    assert rel(model(x), ref(x)) <= 1e-10                   # pre-activations stay above c here


def test_unknown_relu6_mode_is_rejected():
    with pytest.raises(ValueError, match="relu6"):
        equalize(relu_chain(), torch.randn(1, 3, 12, 12, dtype=torch.float64), relu6="gelu")
