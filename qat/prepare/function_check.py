"""BN folding and CLE must keep the FP function up to rounding (SPEC §8 steps 1–2): checked, not assumed.

A prologue step that changes the model's output beyond rounding noise raises `PrologueError` naming the layers
responsible. It is a ValueError, so both training CLIs report it as one `error:` line with a non-zero exit
before anything trains.

Tolerance. Changes are measured as max|y − y_ref| / max|y_ref| over the flattened output (`rel_error`).
CLE rescales channels by arbitrary factors, so the equalized float32 model rounds differently: measured up to
7.5e-5 (≈ 600 eps) on the proxy models with random BN statistics (MobileNetV1; MobileNetV2 5.5e-5), 4e-7 on the
smoke MobileNetV2 of tests/fixtures. A pair whose middle tensor also feeds a residual addition changes the output
by 0.1–1 (0.4 for the pair that broke that smoke model). `rounding_tol` = 10⁴ eps of the dtype (1.2e-3 in
float32, 2.2e-12 in float64) keeps a margin of 15× above the noise and two decades below a broken pair; a few
1e-5 would reject valid equalizations.
"""
from __future__ import annotations

import math

import torch


class PrologueError(ValueError):
    """A prologue step changed the FP function beyond rounding."""


def tensors(obj) -> list[torch.Tensor]:
    """The tensors in a (nested) tuple/list/dict, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in tensors(o)]
    return []


def flat_output(out) -> torch.Tensor:
    """A model output (tensor or nested structure) as one float64 vector."""
    ts = [t.detach().reshape(-1).to(torch.float64) for t in tensors(out) if t.is_floating_point()]
    if not ts:
        raise ValueError("the model output contains no floating-point tensor to compare")
    return torch.cat(ts)


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """max|y − ref| / max|ref|; inf when the shapes differ or a value is not finite."""
    if y.shape != ref.shape:
        return math.inf
    err = float((y.detach() - ref.detach()).abs().max() / ref.detach().abs().max().clamp_min(1e-30)) \
        if ref.numel() else 0.0
    return err if math.isfinite(err) else math.inf


def rounding_tol(dtype: torch.dtype) -> float:
    """The largest relative output change that rounding explains (see the module docstring)."""
    return 1e4 * torch.finfo(dtype).eps
