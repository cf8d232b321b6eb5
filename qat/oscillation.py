"""Oscillation tracking (SPEC §4; Nagel et al. 2022, "Overcoming Oscillations in QAT").

Per weight, on its integer code after each TRAINING forward:
    d = w_int(t) − w_int(t−1);  o(t) = 1 when d ≠ 0 and sign(d) is opposite to the last non-zero d
    freq ← m·o + (1−m)·freq;    count += o
Decisions and statistics read the bias-corrected frequency freq / (1 − (1−m)^n), n = updates so far: an
EMA started at 0 would need ≥ 1/m iterations to mean "oscillations per iteration", so at a proxy's few hundred
iterations a weight oscillating once per 100 iterations could never pass Nagel's 0.01 threshold; corrected,
it passes it at every budget (and the correction vanishes at the paper's budgets). docs/DEVIATIONS.md.
It also keeps the EMA of w_int itself (same momentum), which freezing (§5) rounds to the frozen code; that
EMA restarts when freezing switches on (`start_code_ema`) and is read bias-corrected too (`code_ema`).
"""
from __future__ import annotations

import torch


class OscillationTracker:
    def __init__(self, momentum: float = 0.001):
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"oscillation momentum must lie in (0, 1], got {momentum}")
        self.momentum = momentum
        self.previous: torch.Tensor | None = None    # w_int(t−1)
        self.last_direction: torch.Tensor | None = None  # sign of the last non-zero d (0 = none yet)
        self.frequency: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.int_ema: torch.Tensor | None = None
        self.updates = 0                 # n: frequency updates so far (host-side count, no sync)
        self.code_ema_from: int | None = None  # n when the code EMA (re)started; None = not yet

    @property
    def code_ema_started(self) -> bool:
        return self.code_ema_from is not None

    def bias_corrected_frequency(self) -> torch.Tensor:
        """freq / (1 − (1−m)^n): the EMA of o(t) as if it had been running forever (SPEC §4)."""
        if self.updates == 0:
            return self.frequency
        return self.frequency / (1.0 - (1.0 - self.momentum) ** self.updates)

    @torch.no_grad()
    def start_code_ema(self) -> None:
        """Restart the EMA of w_int from here (freeze onset, SPEC §5): earlier codes no longer count."""
        self.int_ema.zero_()
        self.code_ema_from = self.updates

    def code_ema(self) -> torch.Tensor:
        """Bias-corrected EMA of w_int since `start_code_ema` (the current codes before its first update)."""
        n = self.updates - self.code_ema_from
        if n == 0:
            return self.previous
        return self.int_ema / (1.0 - (1.0 - self.momentum) ** n)

    @torch.no_grad()
    def update(self, w_int: torch.Tensor) -> None:
        w_int = w_int.detach()
        if self.previous is None:
            self.previous = w_int.clone()
            self.last_direction = torch.zeros_like(w_int, dtype=torch.int8)
            self.frequency = torch.zeros_like(w_int, dtype=torch.float32)
            self.count = torch.zeros_like(w_int, dtype=torch.int64)
            self.int_ema = w_int.clone().float()
            return
        if w_int.shape != self.previous.shape:
            raise ValueError(f"tracker got shape {tuple(w_int.shape)}, expected {tuple(self.previous.shape)}")
        direction = torch.sign(w_int - self.previous).to(torch.int8)
        oscillated = (direction != 0) & (direction == -self.last_direction)
        m = self.momentum
        self.frequency.mul_(1 - m).add_(oscillated.float(), alpha=m)
        self.count += oscillated
        self.last_direction = torch.where(direction != 0, direction, self.last_direction)
        self.int_ema.mul_(1 - m).add_(w_int.float(), alpha=m)
        self.previous.copy_(w_int)
        self.updates += 1

    @torch.no_grad()
    def update_fused(self, weight: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, frozen=None) -> bool:
        """`update(codes)` with codes = clamp(round(w/s)) (a frozen weight's code where `frozen.mask`) in one
        in-place pass over the state (qat/kernels.py). False, touching nothing, where the fused path does not
        apply (before the first update, or no compiled kernels): then call `update(codes)`."""
        if self.previous is None:
            return False
        from . import kernels
        extra = () if frozen is None else (frozen.mask, frozen.codes)
        done = kernels.oscillation_update_(weight.detach(), step, qmin, qmax, self.momentum, self.previous,
                                           self.last_direction, self.frequency, self.count, self.int_ema, *extra)
        if done:
            self.updates += 1
        return done

    def state_dict(self) -> dict:
        # Checkpoints hold the integer-valued state in the narrowest exact dtype: 21 bytes a weight become 14
        # (a QAT checkpoint of YOLOv8-m carried 5 times the model's size in tracker state).
        state = {k: getattr(self, k) for k in ("momentum", "last_direction", "frequency", "int_ema", "updates",
                                               "code_ema_from")}
        state["previous"] = stored_codes(self.previous)
        state["count"] = None if self.count is None else self.count.to(torch.int32)
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
        self.previous = loaded_codes(self.previous)
        if self.count is not None:
            self.count = self.count.to(torch.int64)

    def fraction_oscillating(self, threshold: float = 0.005) -> float:
        """Share of weights whose bias-corrected oscillation frequency exceeds `threshold` (a host sync:
        logging only)."""
        if self.frequency is None:
            return 0.0
        return float((self.bias_corrected_frequency() > threshold).float().mean())


def stored_codes(codes: torch.Tensor | None) -> torch.Tensor | None:
    """Integer codes held in a float tensor, as the narrowest integer dtype that holds them exactly (a
    checkpoint's 1 byte a weight at ≤ 8 bits instead of 4); anything else unchanged."""
    if codes is None or not codes.is_floating_point() or codes.numel() == 0 or not torch.equal(codes, codes.round()):
        return codes
    low, high = codes.min().item(), codes.max().item()
    for dtype in (torch.int8, torch.int16, torch.int32):
        if torch.iinfo(dtype).min <= low and high <= torch.iinfo(dtype).max:
            return codes.to(dtype)
    return codes


def loaded_codes(codes: torch.Tensor | None) -> torch.Tensor | None:
    """`stored_codes` undone: codes back in float32, as the quantizer computes them."""
    return codes.to(torch.float32) if codes is not None and not codes.is_floating_point() else codes

