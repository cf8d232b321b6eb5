"""The fused (torch.compile) quantizer kernels of `qat.kernels` against the eager reference of
`qat.functional` (SPEC §1, §2, §4): same forward, input gradient and step gradient within fp32 rounding,
for LSQ and ScaleGrad, per-tensor and per-channel, weights and activations; the eager fallback when
forced or when compilation fails; no recompilation across batch sizes and layers; the fused tracker
update; and the recompute-in-backward of a quantized conv input.

Compilation is slow on a 2-core CPU, so the cases share the few compiled kernel variants.
"""
import os
import weakref
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from qat import functional, kernels
from qat.functional import fake_quant_recipe, int_grid, lsq_fake_quant, lsq_grad_scale, recompute_saved
from qat.oscillation import OscillationTracker

pytestmark = pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile unsupported")


@pytest.fixture(autouse=True)
def _fused_on(monkeypatch):
    monkeypatch.setenv("QAT_FUSED", "1")
    kernels.reset()
    yield
    kernels.reset()


def _run(x, step, *args, fused: bool, need_x=True, need_step=True):
    os.environ["QAT_FUSED"] = "1" if fused else "0"
    xg = x.clone().requires_grad_(need_x)
    sg = step.clone().requires_grad_(need_step)
    out = lsq_fake_quant(xg, sg, *args)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(upstream)
    return out.detach(), xg.grad, sg.grad


def _case(kind: str, scalegrad: bool):
    """(x, step, args of lsq_fake_quant) for an activation or a weight, per-tensor or per-channel."""
    gen = torch.Generator().manual_seed(0)
    if kind == "activation":
        x = torch.randn(6, 8, 10, 10, generator=gen).relu() * 2
        qmin, qmax = int_grid(4, signed=False)
        step = torch.tensor(x.max().item() / qmax)
        n, k = x.numel() // x.shape[0], None
    else:
        x = torch.randn(16, 8, 3, 3, generator=gen) * 0.1
        qmin, qmax = int_grid(4, signed=True)
        if kind == "weight per-channel":
            step = (2 * x.abs().flatten(1).mean(1) / qmax ** 0.5).view(-1, 1, 1, 1)
            n = x.numel() // x.shape[0]
        else:
            step = 2 * x.abs().mean() / qmax ** 0.5
            n = x.numel()
        k = 1.0
    mode = (0.1, k) if scalegrad else (None, None)
    return x, step, (qmin, qmax, lsq_grad_scale(n, qmax)) + mode


def _assert_close(fused, eager):
    out_f, gx_f, gs_f = fused
    out_e, gx_e, gs_e = eager
    torch.testing.assert_close(out_f, out_e, rtol=1e-6, atol=1e-7)
    if gx_e is None:
        assert gx_f is None
    else:
        torch.testing.assert_close(gx_f, gx_e, rtol=1e-5, atol=1e-7)
    if gs_e is None:
        assert gs_f is None
    else:
        # the step gradient is a sum: only its summation order differs
        torch.testing.assert_close(gs_f, gs_e, rtol=1e-4, atol=1e-6 * float(gs_e.abs().max()) + 1e-9)


@pytest.mark.parametrize("scalegrad", [False, True], ids=["lsq", "scalegrad"])
@pytest.mark.parametrize("kind", ["activation", "weight per-tensor", "weight per-channel"])
def test_fused_matches_eager(kind, scalegrad):
    x, step, args = _case(kind, scalegrad)
    with mock.patch.object(kernels, "forward", wraps=kernels.forward) as fwd, \
            mock.patch.object(kernels, "backward", wraps=kernels.backward) as bwd:
        fused = _run(x, step, *args, fused=True)
    assert fwd.call_count == 1 and bwd.call_count == 1, "the fused path was not taken"
    eager = _run(x, step, *args, fused=False)
    _assert_close(fused, eager)
    assert kernels.disabled_reason() is None


@pytest.mark.parametrize("need_x, need_step", [(False, True), (True, False)], ids=["data-input", "frozen-step"])
def test_fused_partial_gradients(need_x, need_step):
    """The first layer's input (data, no gradient) and a frozen step only compute what is needed."""
    x, step, args = _case("activation", scalegrad=True)
    fused = _run(x, step, *args, fused=True, need_x=need_x, need_step=need_step)
    eager = _run(x, step, *args, fused=False, need_x=need_x, need_step=need_step)
    _assert_close(fused, eager)
    assert (fused[1] is None) != need_x and (fused[2] is None) != need_step


def test_qat_fused_0_forces_eager():
    x, step, args = _case("weight per-channel", scalegrad=True)
    with mock.patch.object(kernels, "forward") as fwd, mock.patch.object(kernels, "backward") as bwd:
        _run(x, step, *args, fused=False)
    fwd.assert_not_called()
    bwd.assert_not_called()


def test_compilation_failure_falls_back_to_eager_with_one_warning():
    x, step, args = _case("weight per-tensor", scalegrad=True)
    eager = _run(x, step, *args, fused=False)
    with mock.patch.object(kernels, "_kernel", side_effect=RuntimeError("no C++ compiler")):
        with pytest.warns(RuntimeWarning, match="fused quantizer disabled"):
            fallback = _run(x, step, *args, fused=True)
        assert "no C++ compiler" in kernels.disabled_reason()
        assert not kernels.fused_enabled()
        again = _run(x, step, *args, fused=True)  # stays eager, no second warning needed
    for a, b, c in zip(fallback, again, eager):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, c, rtol=0, atol=0)


def test_unsupported_layout_uses_eager():
    """A non-contiguous input or a step broadcast along another dimension takes the eager path."""
    x = torch.randn(8, 6, 5)
    assert kernels.layout(x.transpose(0, 1), torch.tensor(0.1)) is None
    assert kernels.layout(x, torch.full((1, 6, 1), 0.1)) is None
    assert kernels.layout(x.double(), torch.tensor(0.1, dtype=torch.float64)) is None
    assert kernels.layout(x, torch.tensor(0.1)) == "tensor"
    assert kernels.layout(x, torch.full((8, 1, 1), 0.1)) == "channel"


def test_no_recompilation_across_batch_sizes_and_layers():
    """One compiled graph serves every batch size, layer shape, grid and gradient scale of a variant
    (dynamic shapes; the constants travel in a tensor). A variant has a few size classes (a serial
    CPU build below kernels.SERIAL_NUMEL, which Inductor splits once more at 4096 elements, and a
    multi-threaded build above), hence the warm-up over one size of each class."""
    counters = torch._dynamo.utils.counters

    def step_all(batch, channels, bits):
        for signed in (False, True):
            qmin, qmax = int_grid(bits, signed)
            x = torch.randn(batch, channels, 9, 9)
            n = x.numel() // batch
            _run(x, torch.tensor(0.1), qmin, qmax, lsq_grad_scale(n, qmax), 0.1, None, fused=True)

    for batch in (2, 32, 128):  # warm-up: 648, 10368 and 41472 elements
        step_all(batch, 4, 4)
    graphs = counters["stats"]["unique_graphs"]
    for batch, channels, bits in [(3, 4, 4), (5, 6, 8), (48, 3, 3), (80, 8, 4), (33, 5, 2)]:
        step_all(batch, channels, bits)
    assert counters["stats"]["unique_graphs"] == graphs, "a new batch size, shape or grid recompiled"


class FloatReference:
    """SPEC §4's tracker as first written: `previous` in float32, `count` int64, the code EMA kept from the first
    update and zeroed at `start_code_ema` (what the narrow tracker now allocates there). The yardstick of the
    narrow in-memory state (int8 codes, int16 counts, the EMA only from freeze onset): every field bit for bit.

    The EMA of the codes is rounded as the path that computes it: the eager update's `mul_(1 − m).add_(c,
    alpha=m)` (one fused multiply-add), the kernel's `ema·(1 − m) + c·m` with both factors in float32 (three
    roundings); they differ in the last bit and were never claimed to agree more closely."""

    def __init__(self, momentum: float, kernel_rounding: bool):
        self.m, self.kernel_rounding = momentum, kernel_rounding
        self.previous = None

    def update(self, codes: torch.Tensor) -> None:
        if self.previous is None:
            self.previous = codes.clone()
            self.last_direction = torch.zeros_like(codes, dtype=torch.int8)
            self.frequency = torch.zeros_like(codes)
            self.count = torch.zeros_like(codes, dtype=torch.int64)
            self.int_ema = codes.clone()
            return
        m = self.m
        direction = torch.sign(codes - self.previous).to(torch.int8)
        oscillated = (direction != 0) & (direction == -self.last_direction)
        self.frequency.mul_(1 - m).add_(oscillated.float(), alpha=m)
        self.count += oscillated
        self.last_direction = torch.where(direction != 0, direction, self.last_direction)
        if self.kernel_rounding:
            keep, mf = torch.tensor(1 - m, dtype=torch.float32), torch.tensor(m, dtype=torch.float32)
            self.int_ema = self.int_ema * keep + codes * mf
        else:
            self.int_ema.mul_(1 - m).add_(codes, alpha=m)
        self.previous = codes.clone()


@pytest.mark.parametrize("frozen", [False, True], ids=["plain", "frozen"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_narrow_tracker_state_is_bit_identical_to_the_float_reference(per_channel, frozen, monkeypatch):
    """Eager and fused updates, driven as `WeightQuantizer.forward` drives them, over random code sequences at
    4, 6 and 8 bits (the 6-bit codes jump between −32 and 31, the packed layout's extremes; the 8-bit ones
    between −128 and 127, which an int8 difference would overflow, in the wide layout, eager only), with frozen
    codes whose mask grows midway and the code EMA started midway: `previous`, `last_direction`, `frequency`,
    `count` and `int_ema` equal the float reference's exactly, and are held as int8 (packed in one byte up to
    6 bits), int8, float32, int16 and (from its start on only) float32."""
    from qat.freeze import FrozenCodes
    shape = (7, 5, 3, 3)  # 315 elements: kernels' vector loops end in a scalar tail
    for fused in (False, True):
        monkeypatch.setenv("QAT_FUSED", "1" if fused else "0")
        for bits, noise in ((4, 0.03), (6, 10.0), (8, 10.0)):
            gen = torch.Generator().manual_seed(bits)
            qmin, qmax = int_grid(bits, signed=True)
            w = torch.randn(shape, generator=gen) * 0.1
            step = torch.full((shape[0], 1, 1, 1) if per_channel else (), 0.03)
            if per_channel:
                step = step * torch.linspace(0.5, 1.5, shape[0]).view(-1, 1, 1, 1)
            freeze = FrozenCodes(w) if frozen else None
            tracker, ref = OscillationTracker(0.01), FloatReference(0.01, kernel_rounding=fused and bits <= 6)
            for t in range(40):
                if frozen and t in (0, 20):  # the mask grows: new frozen codes anywhere in the grid
                    freeze.freeze(torch.rand(shape, generator=gen) < 0.15,
                                  torch.randint(qmin, qmax + 1, shape, generator=gen).float())
                if t == 25:
                    assert tracker.int_ema is None
                    tracker.start_code_ema()
                    ref.int_ema.zero_()
                wt = w + noise * torch.randn(shape, generator=gen)
                codes = torch.clamp(torch.round(wt / step), qmin, qmax)
                if frozen:
                    codes = freeze.codes_with_frozen(codes)
                took_fused = tracker.update_fused(wt, step, qmin, qmax, freeze)
                assert took_fused == (fused and t > 0 and bits <= 6)
                if not took_fused:
                    tracker.update(codes, qmin, qmax)
                ref.update(codes)
                assert tracker.previous.dtype == torch.int8 and tracker.count.dtype == torch.int16
                assert (tracker.code_direction is not None) == (bits <= 6)
                assert torch.equal(tracker.previous.float(), ref.previous), (fused, bits, t)
                assert torch.equal(tracker.last_direction, ref.last_direction), (fused, bits, t)
                assert torch.equal(tracker.frequency, ref.frequency), (fused, bits, t)
                assert torch.equal(tracker.count.long(), ref.count), (fused, bits, t)
                if t >= 25:
                    assert torch.equal(tracker.int_ema, ref.int_ema), (fused, bits, t)
            assert int(ref.count.sum()) > 0
            if bits >= 6:
                assert bool(((ref.previous == qmin) | (ref.previous == qmax)).float().mean() > 0.5)
            assert torch.equal(tracker.code_ema(), ref.int_ema / (1 - (1 - 0.01) ** 15))


def test_oscillation_update_declines_when_off():
    w = torch.randn(4, 3)
    state = [torch.zeros(4, 3, dtype=torch.int8), torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.int16),
             torch.zeros(4, 3)]
    os.environ["QAT_FUSED"] = "0"
    assert not kernels.oscillation_update_(w, torch.tensor(0.1), -8, 7, 0.01, *state)
    assert all(not s.any() for s in state)


def test_recompute_of_a_quantized_input_same_gradients_without_keeping_x_hat():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 6, 8, 8, generator=gen).relu()
    w0 = torch.randn(5, 6, 3, 3, generator=gen) * 0.1
    qmin, qmax = int_grid(4, signed=False)
    upstream = torch.randn(4, 5, 8, 8, generator=gen)
    grads, alive = [], []
    for recompute in (False, True):
        x = x0.clone().requires_grad_()
        step = torch.tensor(0.2, requires_grad=True)
        w = w0.clone().requires_grad_()
        x_hat = lsq_fake_quant(x, step, qmin, qmax, 0.01, 0.1)
        if recompute:
            with recompute_saved((x_hat, fake_quant_recipe(x, step, qmin, qmax))):
                out = F.conv2d(x_hat, w, None, 1, 1)
        else:
            out = F.conv2d(x_hat, w, None, 1, 1)
        ref = weakref.ref(x_hat)
        del x_hat
        alive.append(ref() is not None)
        out.backward(upstream)
        grads.append((x.grad, step.grad, w.grad))
    assert alive == [True, False], "with recompute the graph must not keep the quantized input"
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_recompute_detects_inplace_change_of_input():
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    y = x * 1.0  # a non-leaf we can modify in place
    step = torch.tensor(0.1, requires_grad=True)
    w = torch.randn(2, 3, 1, 1, requires_grad=True)
    x_hat = lsq_fake_quant(y, step, 0, 15)
    with recompute_saved((x_hat, fake_quant_recipe(y, step, 0, 15))):
        out = F.conv2d(x_hat, w)
    with torch.no_grad():
        y.add_(1.0)
    with pytest.raises(RuntimeError, match="in-place"):
        out.sum().backward()


def test_functional_reexports_step_eps():
    assert functional.STEP_EPS == kernels.STEP_EPS == 1e-8


def _tracked_quantizer_states(fused: bool, monkeypatch):
    from qat.freeze import FrozenCodes
    from qat.quantizer import WeightQuantizer
    monkeypatch.setenv("QAT_FUSED", "1" if fused else "0")
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(8, 4, 3, 3, generator=gen) * 0.1
    q = WeightQuantizer(3, w0.shape)
    q.init_step(w0)
    q.tracker, q.frozen = OscillationTracker(0.05), FrozenCodes(w0)
    q.frozen.freeze(torch.rand(w0.shape, generator=gen) < 0.1, torch.ones_like(w0))
    q.train()
    for _ in range(10):
        q(w0 + 0.05 * torch.randn(w0.shape, generator=gen))
    return q.tracker


def test_quantizer_forward_tracks_the_same_with_and_without_the_fused_kernel(monkeypatch):
    fused, eager = _tracked_quantizer_states(True, monkeypatch), _tracked_quantizer_states(False, monkeypatch)
    assert int(eager.count.sum()) > 0
    for name in ("previous", "last_direction", "count"):
        assert torch.equal(getattr(fused, name), getattr(eager, name)), name
    torch.testing.assert_close(fused.frequency, eager.frequency, rtol=1e-6, atol=1e-7)
    assert fused.updates == eager.updates == 9  # the bias correction's n counts fused updates too


def test_quant_conv_recomputes_its_input_and_gives_the_plain_gradients():
    from qat.modules import QuantConv2d
    gen = torch.Generator().manual_seed(5)
    conv = QuantConv2d(6, 5, 3, padding=1)
    conv._attach_quantizers(4, 4, False)
    conv.weight_quant.init_step(conv.weight)
    with torch.no_grad():
        conv.input_quant.step.fill_(0.2)
    x0 = torch.randn(2, 6, 8, 8, generator=gen).relu()
    upstream = torch.randn(2, 5, 8, 8, generator=gen)
    x = x0.clone().requires_grad_()
    (conv(x) * upstream).sum().backward()
    got = [x.grad, conv.weight.grad, conv.input_quant.step.grad, conv.weight_quant.step.grad]
    conv.zero_grad()
    x = x0.clone().requires_grad_()
    iq, wq = conv.input_quant, conv.weight_quant
    x_hat = lsq_fake_quant(x, iq.step, iq.qmin, iq.qmax, lsq_grad_scale(x[0].numel(), iq.qmax))
    w_hat = lsq_fake_quant(conv.weight, wq.step, wq.qmin, wq.qmax, lsq_grad_scale(conv.weight.numel(), wq.qmax))
    (F.conv2d(x_hat, w_hat, conv.bias, 1, 1) * upstream).sum().backward()
    want = [x.grad, conv.weight.grad, iq.step.grad, wq.step.grad]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_the_int16_count_widens_before_it_could_overflow(fused, monkeypatch):
    # count ≤ updates: held as int16 until an update could take a weight past 32 767 oscillations, then int32.
    from qat.oscillation import COUNT_WIDEN_AT
    monkeypatch.setenv("QAT_FUSED", "1" if fused else "0")
    step = torch.tensor(0.1)
    tracker = OscillationTracker(0.001)
    up, down = torch.full((4, 4, 3, 3), 0.1), torch.full((4, 4, 3, 3), -0.1)
    tracker.update(up / step, -8, 7)
    tracker.update(down / step, -8, 7)                            # d < 0: the first direction
    assert tracker.count.dtype == torch.int16
    tracker.count.fill_(COUNT_WIDEN_AT - 1)                       # as if every update so far had oscillated
    tracker.updates = COUNT_WIDEN_AT - 1
    for w, expected in ((up, COUNT_WIDEN_AT), (down, COUNT_WIDEN_AT + 1)):
        if not (fused and tracker.update_fused(w, step, -8, 7)):
            tracker.update(w / step, -8, 7)
        assert int(tracker.count.min()) == int(tracker.count.max()) == expected
    assert tracker.count.dtype == torch.int32 and tracker.updates == COUNT_WIDEN_AT + 1


@pytest.mark.parametrize("frozen", [False, True])
def test_a_quantized_conv_rebuilds_both_quantized_tensors_and_its_gradients_are_unchanged(frozen):
    # QuantConv2d keeps x and w (which it keeps anyway), not x̂ and ŵ: the backward rebuilds both from their
    # recipes, frozen codes included, and every gradient equals that of the plain conv of the quantizers' outputs.
    from torch import nn

    from qat.freeze import FrozenCodes
    from qat.modules import QuantConv2d, convert
    gen = torch.Generator().manual_seed(0)
    layer = convert(nn.Sequential(nn.Conv2d(6, 5, 3, padding=1)), 4, first_last_bits=4)[0]
    assert isinstance(layer, QuantConv2d)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 6, 3, 3, generator=gen) * 0.1)
        layer.weight_quant.init_step(layer.weight)
        layer.input_quant.step.fill_(0.2)
    if frozen:
        layer.weight_quant.frozen = FrozenCodes(layer.weight.detach())
        layer.weight_quant.frozen.freeze(torch.rand(layer.weight.shape, generator=gen) < 0.3,
                                         torch.randint(-8, 8, layer.weight.shape, generator=gen).float())
    x0 = torch.randn(4, 6, 8, 8, generator=gen).relu()
    upstream = torch.randn(4, 5, 8, 8, generator=gen)
    grads = []
    for rebuilt in (False, True):
        layer.zero_grad()
        x = x0.clone().requires_grad_()
        if rebuilt:
            with mock.patch.object(functional.Recompute, "rebuild", autospec=True,
                                   side_effect=functional.Recompute.rebuild) as rebuild:
                layer(x).backward(upstream)
            assert rebuild.call_count == 2, "x̂ and ŵ are rebuilt, not kept"
        else:
            x_hat, w_hat = layer.input_quant(x), layer.weight_quant(layer.weight)
            F.conv2d(x_hat, w_hat, layer.bias, 1, 1).backward(upstream)
        grads.append([t.clone() for t in (x.grad, layer.weight.grad, layer.bias.grad, layer.weight_quant.step.grad,
                                          layer.input_quant.step.grad)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
