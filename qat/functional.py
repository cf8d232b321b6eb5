"""Autograd quantizer functions (SPEC §1, §2).

`lsq_fake_quant` is LSQ (Esser et al. 2020) with two optional gradient modes from the paper's
ScaleGrad (§IV-A): PulseSmooth on the step-size gradient (`pulse_delta`) and the distance-aware
factor exp(-k·Δ) on the input gradient (`dist_k`, used for weights only).

Memory: the forward saves only `x` and the step. For an activation, `x` is usually the very tensor
the preceding ReLU already keeps for its own backward, so saving it costs no extra memory; the
backward recomputes `v = x / s` instead of storing masks.

Speed: forward and backward each run as one fused compiled kernel (`qat.kernels`, torch.compile)
where available; the eager code below is the reference and the automatic fallback (`QAT_FUSED=0`
forces it).
"""
from __future__ import annotations

import contextlib
import weakref

import torch

from . import kernels
from .kernels import STEP_EPS  # noqa: F401  (re-exported: the step is clamped to this in the forward)


def pulse_smooth(m: torch.Tensor, delta: float) -> torch.Tensor:
    """PulseSmooth F_ps(m) of SPEC §2 / paper §IV-A, elementwise on m = round(v) - v ∈ [-0.5, 0.5].

    Identity on [-0.5+δ, 0.5-δ]; falls linearly to 0 at m = ±0.5 with slope -(0.5-δ)/δ, so the
    step-size gradient term no longer jumps from -0.5 to +0.5 when v crosses a transition k+0.5.
    """
    if not 0.0 < delta < 0.5:
        raise ValueError(f"pulse_smooth: delta must lie in (0, 0.5), got {delta}")
    slope = -(0.5 - delta) / delta
    left = m < -0.5 + delta   # m ∈ [-0.5, -0.5+δ)
    right = m > 0.5 - delta   # m ∈ (0.5-δ, 0.5]
    return torch.where(left, slope * (m + 0.5), torch.where(right, slope * (m - 0.5), m))


def _step_gradient_term(v, rounded, q, inside, pulse_delta):
    """∂x̂/∂s of SPEC §1: round(v)-v inside the range (PulseSmooth'd for ScaleGrad), qmin/qmax outside."""
    m = rounded - v
    if pulse_delta is not None:
        m = pulse_smooth(m, pulse_delta)
    return torch.where(inside, m, q)  # outside the range q is exactly qmin or qmax


def _eager_forward(x, step, qmin, qmax):
    s = step.clamp_min(STEP_EPS)
    q = torch.clamp(torch.round(x / s), qmin, qmax)
    return q * s


def _eager_backward(grad_out, x, step, qmin, qmax, grad_scale, pulse_delta, dist_k, need_gx, need_gs):
    s = step.clamp_min(STEP_EPS)
    v = x / s
    rounded = torch.round(v)
    q = torch.clamp(rounded, qmin, qmax)
    inside = (v >= qmin) & (v <= qmax)

    grad_x = None
    if need_gx:
        pass_through = inside.to(grad_out.dtype)
        if dist_k is not None:  # ScaleGrad eq. (9)-(10): exp(-k·Δ), Δ = |round(v) - v|
            pass_through = pass_through * torch.exp(-dist_k * (rounded - v).abs())
        grad_x = grad_out * pass_through

    grad_step = None
    if need_gs:
        ds_term = _step_gradient_term(v, rounded, q, inside, pulse_delta)
        # Sum over the elements that share a step: all of them (per-tensor) or per channel.
        grad_step = (grad_out * ds_term).sum_to_size(step.shape) * grad_scale
    return grad_x, grad_step


def _quantize(x, step, qmin, qmax, grad_scale, pulse_delta, dist_k):
    """x̂ and the fused kernels' state for backward ((layout, params), or None for the eager path)."""
    if kernels.fused_enabled():
        mode = kernels.layout(x, step)
        if mode is not None:
            params = kernels.quant_params(qmin, qmax, grad_scale, pulse_delta, dist_k, x.device)
            try:
                return kernels.forward(x, step, params, mode), (mode, params)
            except Exception as err:  # no compiler, unsupported platform, ...: eager from now on
                kernels.disable(f"{type(err).__name__}: {err}")
    return _eager_forward(x, step, qmin, qmax), None


class _LSQFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, step, qmin, qmax, grad_scale, pulse_delta, dist_k):
        ctx.save_for_backward(x, step)
        ctx.qrange = (qmin, qmax)
        ctx.grad_scale, ctx.pulse_delta, ctx.dist_k = grad_scale, pulse_delta, dist_k
        out, ctx.fused = _quantize(x, step, qmin, qmax, grad_scale, pulse_delta, dist_k)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, step = ctx.saved_tensors
        qmin, qmax = ctx.qrange
        need_gx, need_gs = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_gx or need_gs):
            return None, None, None, None, None, None, None
        # The compiled kernels are not differentiable twice: create_graph=True takes the eager path.
        if ctx.fused is not None and kernels.fused_enabled() and not torch.is_grad_enabled():
            mode, params = ctx.fused
            try:
                grad_x, grad_step = kernels.backward(grad_out, x, step, params, mode, ctx.dist_k is not None,
                                                     need_gx, need_gs)
                return grad_x, grad_step, None, None, None, None, None
            except Exception as err:
                kernels.disable(f"{type(err).__name__}: {err}")
        grad_x, grad_step = _eager_backward(grad_out, x, step, qmin, qmax, ctx.grad_scale, ctx.pulse_delta,
                                            ctx.dist_k, need_gx, need_gs)
        return grad_x, grad_step, None, None, None, None, None


def lsq_fake_quant(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, grad_scale: float = 1.0,
                   pulse_delta: float | None = None, dist_k: float | None = None) -> torch.Tensor:
    """x̂ = s · clamp(round(x/s), qmin, qmax) with LSQ's straight-through backward (SPEC §1).

    `step` is 0-dim (per-tensor) or broadcastable to `x` (per-channel, e.g. [C,1,1,1]).
    `grad_scale` multiplies the step gradient (LSQ: 1/sqrt(N·qmax)).
    `pulse_delta`: PulseSmooth δ for the in-range step-gradient term (ScaleGrad), None = plain LSQ.
    `dist_k`: distance-aware factor exp(-k·Δ) on the input gradient (ScaleGrad, weights), None = off.
    """
    return _LSQFakeQuant.apply(x, step, qmin, qmax, grad_scale, pulse_delta, dist_k)


class Recompute:
    """What autograd keeps instead of a fake-quantized tensor: the recipe to rebuild it — `build()`, run without
    autograd — and the tensors it reads, whose versions must not change before the backward rebuilds it."""
    __slots__ = ("build", "inputs", "versions")

    def __init__(self, build, *inputs: torch.Tensor):
        self.build, self.inputs = build, inputs
        self.versions = tuple(t._version for t in inputs)

    def rebuild(self) -> torch.Tensor:
        if tuple(t._version for t in self.inputs) != self.versions:
            raise RuntimeError("recompute: a quantizer's input was modified by an in-place operation after the "
                               "forward; its quantized copy cannot be rebuilt")
        with torch.no_grad():
            return self.build()


def fake_quant_value(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """`lsq_fake_quant`'s forward value s·clamp(round(x/s), qmin, qmax), computed as it computes it."""
    return _quantize(x, step, qmin, qmax, 1.0, None, None)[0]


def fake_quant_recipe(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int) -> Recompute:
    """The recipe of `lsq_fake_quant(x, step, qmin, qmax, ...)`'s value: (x, a copy of step), one fused pass."""
    x, step = x.detach(), step.detach().clone()
    return Recompute(lambda: fake_quant_value(x, step, qmin, qmax), x)


@contextlib.contextmanager
def recompute_saved(*pairs: tuple[torch.Tensor, Recompute | None]):
    """Inside this block, autograd keeps each fake-quantized tensor of `pairs` ((x̂, its Recompute); None: keep
    x̂ itself) as its recipe, not as values, and rebuilds it (one fused pass) when a backward needs it.

    Wrap the consumer of quantized tensors, e.g. `conv2d(x_hat, w_hat)`, which would otherwise keep x̂ for its
    weight gradient and ŵ for its input gradient: x and w are already kept (by the quantizers, and an activation
    usually by the ReLU before it), so the layer then keeps no activation- or weight-sized tensor beyond what FP
    training keeps. Costs one extra quantizer forward per tensor in backward. No effect without autograd or
    inside other saved-tensor hooks (activation checkpointing, offloading), which keep precedence; a quantizer
    that passed its input through (disabled, observing) has no recipe (None).
    """
    pairs = [(t, r) for t, r in pairs if r is not None and t.requires_grad]
    if (not pairs or not torch.is_grad_enabled() or not torch._C._autograd._saved_tensors_hooks_is_enabled()
            or torch._C._autograd._top_saved_tensors_default_hooks(False) is not None):
        yield
        return
    targets = [(weakref.ref(t), r) for t, r in pairs]  # autograd keeps the hooks: no strong reference here

    def pack(t):
        for target, recipe in targets:
            if t is target():
                return recipe
        return t

    def unpack(packed):
        return packed.rebuild() if isinstance(packed, Recompute) else packed

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def lsq_grad_scale(elements_per_step: int, qmax: int) -> float:
    """LSQ gradient scale g = 1/sqrt(N·qmax) (SPEC §1)."""
    return (elements_per_step * qmax) ** -0.5


def int_grid(bits: int, signed: bool) -> tuple[int, int]:
    """Integer grid [qmin, qmax]: signed [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1]."""
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1
