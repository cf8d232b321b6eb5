"""LSQ and ScaleGrad quantizer math (SPEC §1, §2) against PyTorch's learnable fake-quant and a
float64 reference written here."""
import math

import pytest
import torch

from qat.functional import lsq_fake_quant, lsq_grad_scale, pulse_smooth

QMIN, QMAX = -8, 7


def _away_from_ties(x, s, margin=0.05):
    """Keep elements whose v = x/s is not near a rounding tie nor in the half-bins just outside the range."""
    v = x / s
    near_tie = ((v - torch.floor(v)) - 0.5).abs() < margin
    outside_half_bin = ((v > QMAX) & (v < QMAX + 0.5 + margin)) | ((v < QMIN) & (v > QMIN - 0.5 - margin))
    return ~near_tie & ~outside_half_bin


def test_lsq_per_tensor_matches_pytorch():
    torch.manual_seed(0)
    s = torch.tensor(0.37)
    x = torch.randn(4000) * 3
    x = x[_away_from_ties(x, s)].clone().requires_grad_()
    g = lsq_grad_scale(x.numel(), QMAX)
    step = s.clone().requires_grad_()
    out = lsq_fake_quant(x, step, QMIN, QMAX, g)
    upstream = torch.randn_like(out)
    out.backward(upstream)

    x_ref = x.detach().clone().requires_grad_()
    s_ref = s.reshape(1).clone().requires_grad_()
    ref = torch._fake_quantize_learnable_per_tensor_affine(x_ref, s_ref, torch.zeros(1), QMIN, QMAX, g)
    ref.backward(upstream)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(step.grad.reshape(1), s_ref.grad, rtol=1e-5, atol=1e-6)
    assert (x.abs() / s > QMAX + 1).any(), "the test must cover clipped elements"


def test_lsq_per_channel_matches_pytorch():
    torch.manual_seed(1)
    channels = 6
    s = torch.rand(channels) * 0.3 + 0.1
    w = torch.randn(channels, 4, 3, 3)
    # replace elements near ties / outside half-bins by safe values (0 is exactly a level)
    w = torch.where(_away_from_ties(w, s.view(-1, 1, 1, 1)), w, torch.zeros_like(w)).requires_grad_()
    g = lsq_grad_scale(w[0].numel(), QMAX)
    step = s.view(-1, 1, 1, 1).clone().requires_grad_()
    out = lsq_fake_quant(w, step, QMIN, QMAX, g)
    upstream = torch.randn_like(out)
    out.backward(upstream)

    w_ref = w.detach().clone().requires_grad_()
    s_ref = s.clone().requires_grad_()
    ref = torch._fake_quantize_learnable_per_channel_affine(w_ref, s_ref, torch.zeros(channels),
                                                            0, QMIN, QMAX, g)
    ref.backward(upstream)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(w.grad, w_ref.grad)
    torch.testing.assert_close(step.grad.flatten(), s_ref.grad, rtol=1e-5, atol=1e-6)


def test_step_is_kept_positive_in_forward():
    x = torch.randn(10)
    out = lsq_fake_quant(x, torch.tensor(-1.0), QMIN, QMAX)
    assert torch.isfinite(out).all() and out.abs().max() <= 1e-6


@pytest.mark.parametrize("delta", [0.05, 0.1, 0.25])
def test_pulse_smooth_fixed_points(delta):
    m = torch.tensor([-0.5, 0.5, 0.0, 0.2 * (0.5 - delta), -0.5 + delta, 0.5 - delta], dtype=torch.float64)
    out = pulse_smooth(m, delta)
    assert out[0] == 0 and out[1] == 0                       # zero at the transition points
    assert out[2] == 0 and out[3] == m[3]                    # identity in the middle
    torch.testing.assert_close(out[4:], m[4:])               # continuous at ±(0.5-δ)
    eps = 1e-9
    around = torch.tensor([0.5 - delta - eps, 0.5 - delta + eps, -0.5 + delta - eps, -0.5 + delta + eps],
                          dtype=torch.float64)
    vals = pulse_smooth(around, delta)
    assert abs(vals[0] - vals[1]) < 1e-6 and abs(vals[2] - vals[3]) < 1e-6
    # linear fall with slope -(0.5-δ)/δ
    mid = torch.tensor([0.5 - delta / 2], dtype=torch.float64)
    assert math.isclose(float(pulse_smooth(mid, delta)), (0.5 - delta) / 2, rel_tol=1e-9)


def test_pulse_smooth_rejects_bad_delta():
    with pytest.raises(ValueError):
        pulse_smooth(torch.zeros(1), 0.5)


def _reference_grads(x, s, upstream, g, delta, k):
    """Float64 ScaleGrad reference straight from SPEC §2."""
    x, s, upstream = x.double(), s.double(), upstream.double()
    v = x / s
    r = torch.round(v)
    inside = (v >= QMIN) & (v <= QMAX)
    m = r - v
    slope = -(0.5 - delta) / delta
    f = torch.where(m < -0.5 + delta, slope * (m + 0.5), torch.where(m > 0.5 - delta, slope * (m - 0.5), m))
    ds = torch.where(inside, f, torch.where(v < QMIN, torch.full_like(v, QMIN), torch.full_like(v, QMAX)))
    grad_s = g * (upstream * ds).sum()
    grad_x = upstream * inside * torch.exp(-k * (r - v).abs())
    return grad_x, grad_s


def test_scalegrad_gradients_match_float64_reference():
    torch.manual_seed(2)
    s = torch.tensor(0.21)
    x = torch.randn(5000) * 1.5
    x = x[_away_from_ties(x, s, margin=1e-3)].clone().requires_grad_()
    step = s.clone().requires_grad_()
    upstream = torch.randn(x.shape)
    g = lsq_grad_scale(x.numel(), QMAX)
    lsq_fake_quant(x, step, QMIN, QMAX, g, pulse_delta=0.1, dist_k=1.0).backward(upstream)
    ref_x, ref_s = _reference_grads(x.detach(), s, upstream, g, 0.1, 1.0)
    torch.testing.assert_close(x.grad.double(), ref_x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step.grad.double(), ref_s, rtol=1e-4, atol=1e-5)
    # the distance factor really acts: weights near a threshold get less than e^{-0.4} of the gradient
    v = x.detach() / s
    near_threshold = ((v - torch.round(v)).abs() > 0.4) & (v.abs() < QMAX)
    assert (x.grad[near_threshold].abs() <= upstream[near_threshold].abs() * math.exp(-0.4) + 1e-6).all()


def test_no_step_gradient_jump_across_transition():
    """LSQ's step gradient jumps from -0.5 to +0.5 at v = k + 0.5; ScaleGrad's is continuous there."""
    s = torch.tensor(1.0)
    x = torch.tensor([2.5 - 1e-4, 2.5 + 1e-4])

    def step_grads(**mode):
        grads = []
        for xi in x:
            step = s.clone().requires_grad_()
            lsq_fake_quant(xi.view(1), step, QMIN, QMAX, 1.0, **mode).sum().backward()
            grads.append(float(step.grad))
        return grads

    lsq_left, lsq_right = step_grads()
    assert lsq_left == pytest.approx(-0.5, abs=1e-3) and lsq_right == pytest.approx(0.5, abs=1e-3)
    sg_left, sg_right = step_grads(pulse_delta=0.1)
    assert abs(sg_left - sg_right) < 1e-2 and abs(sg_left) < 1e-2
