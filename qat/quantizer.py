"""Quantizer modules: one learnable step size, a grid, and the gradient mode (SPEC §1, §2).

`WeightQuantizer` also hosts the per-weight training state that the methods attach to it:
an oscillation tracker (§4), frozen codes (§5) and the AFW offsets (§6). Each is `None` unless a
recipe installs it, so plain LSQ pays nothing for them.
"""
from __future__ import annotations

import torch
from torch import nn

from .functional import (STEP_EPS, Recompute, fake_quant_recipe, fake_quant_value, int_grid, lsq_fake_quant,
                         lsq_grad_scale)


class Quantizer(nn.Module):
    """Fake-quantizer with a learnable step `s`: x̂ = s·clamp(round(x/s), qmin, qmax).

    The grid follows (bits, signed). The step is 0-dim (per-tensor) or has one entry per output
    channel (`channels` set, weights only). `pulse_delta` / `dist_k` select ScaleGrad's gradients.
    `enabled=False` makes it the identity (FP evaluation of the same module tree).
    """

    def __init__(self, bits: int, signed: bool, channels: int | None = None, channel_shape=None):
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"bits must be between 2 and 8, got {bits}")
        self.bits = bits
        self.signed = signed
        shape = tuple(channel_shape) if channels is not None else ()
        self.step = nn.Parameter(torch.ones(shape))
        self.pulse_delta: float | None = None
        self.dist_k: float | None = None
        self.enabled = True

    @property
    def qmin(self) -> int:
        return int_grid(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return int_grid(self.bits, self.signed)[1]

    @property
    def per_channel(self) -> bool:
        return self.step.dim() > 0

    # bits and signedness travel with the state dict (signedness is decided by calibration).
    def get_extra_state(self):
        return {"bits": self.bits, "signed": self.signed}

    def set_extra_state(self, state):
        self.bits, self.signed = int(state["bits"]), bool(state["signed"])

    def extra_repr(self) -> str:
        mode = "per-channel" if self.per_channel else "per-tensor"
        return f"bits={self.bits}, grid=[{self.qmin}, {self.qmax}], {mode}"


class WeightQuantizer(Quantizer):
    """Signed weight quantizer. LSQ N = numel (per-tensor) or numel / out_channels (per-channel)."""

    def __init__(self, bits: int, weight_shape, per_channel: bool = False):
        channel_shape = (weight_shape[0],) + (1,) * (len(weight_shape) - 1)
        super().__init__(bits, signed=True, channels=weight_shape[0] if per_channel else None,
                         channel_shape=channel_shape)
        numel = 1
        for d in weight_shape:
            numel *= d
        self.elements_per_step = numel // weight_shape[0] if per_channel else numel
        self.tracker = None   # qat.oscillation.OscillationTracker, installed by a recipe
        self.frozen = None    # qat.freeze.FrozenCodes
        self.afw = None       # qat.afw.AFWOffsets

    @torch.no_grad()
    def init_step(self, weight: torch.Tensor) -> None:
        """LSQ init s0 = 2·mean|w| / sqrt(qmax), per tensor or per output channel."""
        if self.per_channel:
            mean_abs = weight.abs().flatten(1).mean(1).view_as(self.step)
        else:
            mean_abs = weight.abs().mean()
        self.step.copy_(2 * mean_abs / self.qmax ** 0.5)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Integer codes clamp(round(w/s)) as float, without gradient."""
        with torch.no_grad():
            return torch.clamp(torch.round(weight / self.step), self.qmin, self.qmax)

    def effective_codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The codes the forward quantizes `weight` to: a frozen weight's frozen code, whatever its latent."""
        codes = self.codes(weight)
        return codes if self.frozen is None else self.frozen.codes_with_frozen(codes)

    def recompute_recipe(self, weight: torch.Tensor) -> Recompute | None:
        """How a backward rebuilds `forward(weight)`'s value (qat.functional.recompute_saved): the fake-quantized
        weight, frozen weights at s·code (FrozenCodes.apply's value). None where forward passes the weight
        through or AFW's offsets act."""
        if not self.enabled or self.afw is not None:
            return None
        if self.frozen is None:
            return fake_quant_recipe(weight, self.step, self.qmin, self.qmax)
        w, step, (qmin, qmax) = weight.detach(), self.step.detach().clone(), (self.qmin, self.qmax)
        mask, codes = self.frozen.mask, self.frozen.codes

        def build():
            return torch.where(mask, step.clamp_min(STEP_EPS) * codes, fake_quant_value(w, step, qmin, qmax))
        return Recompute(build, w, mask, codes)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        if self.afw is not None:
            return self.afw(weight, self)
        grad_scale = lsq_grad_scale(self.elements_per_step, self.qmax)
        w_hat = lsq_fake_quant(weight, self.step, self.qmin, self.qmax, grad_scale, self.pulse_delta, self.dist_k)
        if self.frozen is not None:
            w_hat = self.frozen.apply(w_hat, self.step, grad_scale)
        if self.tracker is not None and self.training and \
                not self.tracker.update_fused(weight, self.step, self.qmin, self.qmax, self.frozen):
            self.tracker.update(self.effective_codes(weight), self.qmin, self.qmax)
        return w_hat


class ActQuantizer(Quantizer):
    """Input-activation quantizer; grid unsigned unless calibration saw negative inputs.

    While `observing`, it passes the input through and keeps a moving-average min/max
    (momentum 0.9, SPEC §1) for the step initialisation.
    """

    def __init__(self, bits: int, momentum: float = 0.9):
        super().__init__(bits, signed=False)
        self.momentum = momentum
        self.observing = False
        self.register_buffer("running_min", torch.zeros(()), persistent=False)
        self.register_buffer("running_max", torch.zeros(()), persistent=False)
        self.register_buffer("observed_batches", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min(), x.max()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
        first = self.observed_batches == 0
        m = self.momentum
        self.running_min.copy_(torch.where(first, lo, m * self.running_min + (1 - m) * lo))
        self.running_max.copy_(torch.where(first, hi, m * self.running_max + (1 - m) * hi))
        self.observed_batches += 1

    @torch.no_grad()
    def init_step_from_range(self) -> None:
        """Choose the grid's signedness from the observed minimum, then s = range / levels."""
        if int(self.observed_batches) == 0:
            raise RuntimeError("activation quantizer was never calibrated: no calibration batch reached it")
        lo, hi = float(self.running_min), float(self.running_max)
        self.signed = lo < 0
        if self.signed:
            step = max(-lo / -self.qmin, hi / self.qmax)
        else:
            step = hi / self.qmax
        self.step.fill_(max(step, 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observe(x)
            return x
        if not self.enabled:
            return x
        per_sample = x.numel() // x.shape[0] if x.dim() > 1 else x.numel()
        return lsq_fake_quant(x, self.step, self.qmin, self.qmax,
                              lsq_grad_scale(per_sample, self.qmax), self.pulse_delta, None)
