"""Fused (torch.compile / Inductor) kernels for the LSQ quantizer of `qat.functional` (DESIGN: Performance).

`qat.functional.lsq_fake_quant` calls these when they apply and falls back to its eager code otherwise;
both compute SPEC §1–§2 and agree within fp32 rounding (tests/test_fused_quantizer.py).

One forward and one backward kernel per call, each a single pass over the tensor:
- forward  reads x, writes x̂ = s·clamp(round(x/s), qmin, qmax). Only x and s are kept for backward
  (x is usually already held by the producer's own backward: the parameter itself for weights, the
  ReLU output for activations), nothing of size x is added.
- backward reads dL/dx̂ and x, writes dL/dx and reduces dL/ds inside the same loop (all elements for
  per-tensor, one row per output channel for per-channel). No host syncs.

Compilation is paid once per process and kernel variant, never per shape or per layer:
- tensors are flattened to 1-D (per-tensor) or 2-D [C, K] (per-channel) views and compiled with
  `dynamic=True`, so every weight, activation and batch size reuses one kernel;
- the grid, PulseSmooth δ, exp(-kΔ)'s k and LSQ's gradient scale travel as a small cached device
  tensor `params` (runtime values, not constants baked into the code), so changing them or the batch
  size never recompiles; only the variant flags (distance-aware factor on/off, which gradients are
  needed, and on CPU a single-threaded build for tensors under SERIAL_NUMEL elements) select a
  kernel, each its own code object with its own Dynamo cache.
Measured cost (2-core CPU, warm Inductor cache in $TORCHINDUCTOR_CACHE_DIR): ~5 s once per process
to load Dynamo/Inductor, then ~0.5 s per variant; cold, 3–10 s per variant.

`oscillation_update_` fuses the oscillation tracker's update (SPEC §4) the same way.

Fallback: `QAT_FUSED=0` forces the eager path; so does a missing compiler or any compilation error
(one warning, then eager for the rest of the process), an unsupported layout (non-contiguous x, a step
that is neither per-tensor nor per-leading-dim), float64 inputs, or an outer `torch.compile` tracing
the quantizer (Dynamo then compiles the eager math itself).
"""
from __future__ import annotations

import os
import types
import warnings

import torch

STEP_EPS = 1e-8  # the step is clamped to this in the forward so that it can never reach 0 or below

# Layout of `params` (float32, on x's device): the grid, PulseSmooth's thresholds and slope, k, g.
_QMIN, _QMAX, _LEFT, _RIGHT, _SLOPE, _DIST_K, _GRAD_SCALE = range(7)
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_state = {"disabled": None}  # reason string once the fused path is off for this process
_params_cache: dict = {}
_PARAMS_CACHE_MAX = 4096


# ---------------------------------------------------------------------------------------------------
# The math, written once for the compiler. Everything is computed in float32.

def _pulse_smooth(m, p):
    """SPEC §2 PulseSmooth with runtime thresholds; with δ off the thresholds are ±1 (never crossed)."""
    left = m < p[_LEFT]
    right = m > p[_RIGHT]
    return torch.where(left, p[_SLOPE] * (m + 0.5), torch.where(right, p[_SLOPE] * (m - 0.5), m))


def _forward_math(x, step, p):
    s = step.clamp_min(STEP_EPS)
    q = torch.clamp(torch.round(x.float() / s), p[_QMIN], p[_QMAX])
    return (q * s).to(x.dtype)


def _backward_math(g, x, step, p, per_channel: bool, dist: bool, need_gx: bool, need_gs: bool):
    s = step.clamp_min(STEP_EPS)
    gf = g.float()
    v = x.float() / s
    rounded = torch.round(v)
    inside = (v >= p[_QMIN]) & (v <= p[_QMAX])
    m = rounded - v
    grad_x = grad_s = None
    if need_gx:
        pass_through = inside.to(torch.float32)
        if dist:  # ScaleGrad's distance-aware factor exp(-k·|round(v) - v|), weights only
            pass_through = pass_through * torch.exp(-p[_DIST_K] * m.abs())
        grad_x = (gf * pass_through).to(g.dtype)
    if need_gs:
        ds_term = torch.where(inside, _pulse_smooth(m, p), torch.clamp(rounded, p[_QMIN], p[_QMAX]))
        prod = gf * ds_term
        total = prod.sum(dim=1, keepdim=True) if per_channel else prod.sum()
        grad_s = (total * p[_GRAD_SCALE]).to(step.dtype)
    return grad_x, grad_s


# ---------------------------------------------------------------------------------------------------
# Compiled variants. Dynamo keeps its compiled-code cache (and its recompile limit, 8) per Python code
# object, so each variant gets a code object of its own: a variant's cache then holds one entry per
# rank (1-D per-tensor, 2-D per-channel), dtype and size class (Inductor specialises once at 4096
# elements), far below the limit.

def _clone_function(fn, name: str):
    code = fn.__code__.replace(co_name=name, co_qualname=name) if hasattr(fn.__code__, "co_qualname") \
        else fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _backward_variant(per_channel: bool, dist: bool, need_gx: bool, need_gs: bool):
    def kernel(g, x, step, p):
        return _backward_math(g, x, step, p, per_channel, dist, need_gx, need_gs)
    return kernel


_compiled: dict = {}

# CPU tensors below this many elements run a single-threaded kernel (PyTorch's own grain size for
# parallel loops): an OpenMP region costs a thread wake-up, which on small tensors (most weights)
# exceeds the work, and on a busy machine can cost milliseconds.
SERIAL_NUMEL = 32768


def _kernel(key, serial: bool):
    """The compiled function of a kernel variant; `serial` selects the single-threaded CPU build."""
    fn = _compiled.get((key, serial))
    if fn is None:
        if key == "forward":
            src, name = _forward_math, "lsq_fused_forward"
        elif key[0] == "oscillation":
            src, name = _OSCILLATION_VARIANTS[key[1:]]
        else:
            _, per_channel, dist, need_gx, need_gs = key
            src = _backward_variant(per_channel, dist, need_gx, need_gs)
            name = "lsq_fused_backward_" + "_".join(str(int(f)) for f in key[1:])
        options = {"cpp.threads": 1} if serial else None
        fn = torch.compile(_clone_function(src, name + ("_serial" if serial else "")), dynamic=True,
                           fullgraph=True, options=options)
        _compiled[(key, serial)] = fn
    return fn


def _serial(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and t.numel() < SERIAL_NUMEL


# ---------------------------------------------------------------------------------------------------
# Public helpers used by qat.functional.

def fused_enabled() -> bool:
    """Whether the compiled path may be used now (env var, platform, no earlier failure, not tracing)."""
    if _state["disabled"] is not None:
        return False
    if os.environ.get("QAT_FUSED", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if torch.compiler.is_compiling():
        return False
    return True


def disable(reason: str) -> None:
    """Turn the fused path off for this process (after a compilation failure), warning once."""
    if _state["disabled"] is None:
        _state["disabled"] = reason
        warnings.warn(f"qat.kernels: fused quantizer disabled, using the eager path ({reason})", RuntimeWarning,
                      stacklevel=3)


def reset() -> None:
    """Forget an earlier failure (tests)."""
    _state["disabled"] = None


def disabled_reason() -> str | None:
    return _state["disabled"]


def _check_platform() -> None:
    if not torch._dynamo.is_dynamo_supported():
        raise RuntimeError("torch.compile is not supported on this platform")


def layout(x: torch.Tensor, step: torch.Tensor):
    """How the kernels see (x, step): 'tensor' (flattened 1-D), 'channel' ([C, K]), or None (eager)."""
    if x.dtype not in _FUSED_DTYPES or step.dtype not in _FUSED_DTYPES or x.device != step.device:
        return None
    if not x.is_contiguous() or x.numel() == 0:
        return None
    if step.numel() == 1:
        return "tensor"
    if (x.dim() >= 1 and step.dim() == x.dim() and step.shape[0] == x.shape[0]
            and all(d == 1 for d in step.shape[1:])):
        return "channel"
    return None


def quant_params(qmin: int, qmax: int, grad_scale: float, pulse_delta, dist_k, device) -> torch.Tensor:
    """The cached float32 tensor of runtime constants (one per distinct setting and device)."""
    key = (qmin, qmax, float(grad_scale), pulse_delta, dist_k, device)
    p = _params_cache.get(key)
    if p is None:
        if pulse_delta is None:
            left, right, slope = -1.0, 1.0, 0.0  # m = round(v) - v ∈ [-0.5, 0.5] never crosses ±1
        else:
            if not 0.0 < pulse_delta < 0.5:
                raise ValueError(f"pulse_smooth: delta must lie in (0, 0.5), got {pulse_delta}")
            left, right, slope = -0.5 + pulse_delta, 0.5 - pulse_delta, -(0.5 - pulse_delta) / pulse_delta
        values = [0.0] * 7
        values[_QMIN], values[_QMAX], values[_LEFT], values[_RIGHT], values[_SLOPE] = qmin, qmax, left, right, slope
        values[_DIST_K] = 0.0 if dist_k is None else dist_k
        values[_GRAD_SCALE] = grad_scale
        if len(_params_cache) >= _PARAMS_CACHE_MAX:
            _params_cache.clear()
        p = torch.tensor(values, dtype=torch.float32, device=device)
        _params_cache[key] = p
    return p


def _views(t: torch.Tensor, mode: str, channels: int) -> torch.Tensor:
    # `.detach()` after the view gives a tensor with no `_base` and requires_grad=False: Dynamo then
    # guards on the flat view alone, not on the original shape or on requires_grad (no recompiles).
    return (t.view(-1) if mode == "tensor" else t.view(channels, -1)).detach()


def _step_view(step: torch.Tensor, mode: str) -> torch.Tensor:
    return (step.reshape(()) if mode == "tensor" else step.reshape(-1, 1)).detach()


def forward(x: torch.Tensor, step: torch.Tensor, params: torch.Tensor, mode: str) -> torch.Tensor:
    """x̂ of SPEC §1 in one compiled kernel (x contiguous; `mode` from `layout`)."""
    _check_platform()
    y = _kernel("forward", _serial(x))(_views(x, mode, x.shape[0]), _step_view(step, mode), params)
    return y.view(x.shape)


def backward(grad_out: torch.Tensor, x: torch.Tensor, step: torch.Tensor, params: torch.Tensor, mode: str,
             dist: bool, need_gx: bool, need_gs: bool):
    """(dL/dx, dL/ds) of SPEC §1–§2 in one compiled kernel; the step gradient is reduced in the kernel."""
    _check_platform()
    g = grad_out.contiguous()
    kernel = _kernel(("backward", mode == "channel", dist, need_gx, need_gs), _serial(x))
    grad_x, grad_s = kernel(_views(g, mode, x.shape[0]), _views(x, mode, x.shape[0]), _step_view(step, mode),
                            params)
    if grad_x is not None:
        grad_x = grad_x.view(x.shape)
    if grad_s is not None:
        grad_s = grad_s.view(step.shape)
    return grad_x, grad_s


# ---------------------------------------------------------------------------------------------------
# Oscillation tracking (SPEC §4) in one pass: the eager `OscillationTracker.update(codes(w))` reads and
# writes the weight-sized state in ~18 separate operations per layer and step; this kernel reads the
# weight and the state once and writes the state back in place.

def _oscillation_math(w, step, p, code_direction, frequency, count, int_ema, frozen_mask, frozen_codes):
    w_int = torch.clamp(torch.round(w / step), p[0], p[1])  # WeightQuantizer.codes: no step clamp
    if frozen_mask is not None:
        w_int = torch.where(frozen_mask, frozen_codes, w_int)
    w_int = w_int.to(torch.float32)
    # `code_direction` holds 4·w_int(t−1) + (last direction + 1) in int8 (OscillationTracker): unpacked and
    # repacked in float32, where every value is an exact small integer and nothing can overflow.
    packed = code_direction.to(torch.float32)
    previous = torch.floor(packed * 0.25)
    last_direction = packed - 4 * previous - 1
    direction = torch.sign(w_int - previous)
    oscillated = (direction != 0) & (direction == -last_direction)
    m, keep = p[2], p[3]  # momentum and 1 - momentum
    frequency.copy_(frequency * keep + oscillated.to(frequency.dtype) * m)
    count.add_(oscillated.to(count.dtype))
    if int_ema is not None:  # allocated from freeze onset on (OscillationTracker.start_code_ema)
        int_ema.copy_(int_ema * keep + w_int.to(int_ema.dtype) * m)
    last_direction = torch.where(direction != 0, direction, last_direction)
    code_direction.copy_((4 * w_int + last_direction + 1).to(code_direction.dtype))


# One code object per variant (frozen codes or not, code EMA or not), each with its own Dynamo cache.
def _oscillation_plain(w, step, p, code_direction, frequency, count):
    _oscillation_math(w, step, p, code_direction, frequency, count, None, None, None)


def _oscillation_plain_ema(w, step, p, code_direction, frequency, count, int_ema):
    _oscillation_math(w, step, p, code_direction, frequency, count, int_ema, None, None)


def _oscillation_frozen(w, step, p, code_direction, frequency, count, frozen_mask, frozen_codes):
    _oscillation_math(w, step, p, code_direction, frequency, count, None, frozen_mask, frozen_codes)


def _oscillation_frozen_ema(w, step, p, code_direction, frequency, count, int_ema, frozen_mask, frozen_codes):
    _oscillation_math(w, step, p, code_direction, frequency, count, int_ema, frozen_mask, frozen_codes)


_OSCILLATION_VARIANTS = {
    (False, False): (_oscillation_plain, "lsq_fused_oscillation"),
    (False, True): (_oscillation_plain_ema, "lsq_fused_oscillation_ema"),
    (True, False): (_oscillation_frozen, "lsq_fused_oscillation_frozen"),
    (True, True): (_oscillation_frozen_ema, "lsq_fused_oscillation_frozen_ema"),
}


def oscillation_update_(weight: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, momentum: float,
                        code_direction: torch.Tensor, frequency: torch.Tensor, count: torch.Tensor,
                        int_ema: torch.Tensor | None, frozen_mask: torch.Tensor | None = None,
                        frozen_codes: torch.Tensor | None = None) -> bool:
    """`OscillationTracker.update(codes)` with codes = clamp(round(w/s), qmin, qmax) (frozen codes
    substituted where `frozen_mask`), fused into one in-place kernel over the tracker's packed state
    (`code_direction`: 4·code + direction + 1, ≤ 6-bit grids). `int_ema` None: no code EMA yet (before freeze
    onset), the kernel neither reads nor writes one.

    Returns False, touching nothing, when the fused path does not apply (then run the eager update).
    """
    state = (code_direction, frequency, count) + (() if int_ema is None else (int_ema,))
    extra = () if frozen_mask is None else (frozen_mask, frozen_codes)
    if not fused_enabled() or weight.dtype not in _FUSED_DTYPES:
        return False
    tensors = (weight,) + state + extra
    if any(t.shape != weight.shape or not t.is_contiguous() or t.device != weight.device for t in tensors):
        return False
    if step.numel() == 1:
        s = step.detach().reshape(())
        flat = [t.view(-1).detach() for t in tensors]
    elif step.dim() == weight.dim() and step.shape[0] == weight.shape[0] and all(d == 1 for d in step.shape[1:]):
        s = step.detach().reshape(-1, 1)
        flat = [t.view(weight.shape[0], -1).detach() for t in tensors]
    else:
        return False
    key = ("oscillation", qmin, qmax, float(momentum), weight.device)
    p = _params_cache.get(key)
    if p is None:
        p = _params_cache[key] = torch.tensor([qmin, qmax, momentum, 1 - momentum], dtype=torch.float32,
                                              device=weight.device)
    fn = _kernel(("oscillation", bool(extra), int_ema is not None), _serial(weight))
    try:
        _check_platform()
        with torch.no_grad():
            fn(flat[0], s, p, *flat[1:])
    except Exception as err:
        disable(f"{type(err).__name__}: {err}")
        return False
    return True
