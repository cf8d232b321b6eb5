"""Oscillation tracking (SPEC §4; Nagel et al. 2022, "Overcoming Oscillations in QAT").

Per weight, on its integer code after each TRAINING forward:
    d = w_int(t) − w_int(t−1);  o(t) = 1 when d ≠ 0 and sign(d) is opposite to the last non-zero d
    freq ← m·o + (1−m)·freq;    count += o
Decisions and statistics read the bias-corrected frequency freq / (1 − (1−m)^n), n = updates so far: an
EMA started at 0 would need ≥ 1/m iterations to mean "oscillations per iteration", so at a proxy's few hundred
iterations a weight oscillating once per 100 iterations could never pass Nagel's 0.01 threshold; corrected,
it passes it at every budget (and the correction vanishes at the paper's budgets). docs/DEVIATIONS.md.
It also keeps the EMA of w_int itself (same momentum), which freezing (§5) rounds to the frozen code; that
EMA starts when freezing switches on (`start_code_ema`, which allocates it) and is read bias-corrected too
(`code_ema`).
"""
from __future__ import annotations

import torch


COUNT_WIDEN_AT = torch.iinfo(torch.int16).max  # updates after which `count` is held as int32
PACKED_GRID = (-32, 31)  # grids within it hold code and direction in one byte: 4·code + (direction + 1)


def packs(qmin: int, qmax: int) -> bool:
    """Whether a grid's codes and the last direction fit one int8 as 4·code + (direction + 1) (≤ 6-bit grids)."""
    return PACKED_GRID[0] <= qmin and qmax <= PACKED_GRID[1]


WIDE_FIELDS = {"previous": "stored_previous", "last_direction": "stored_last_direction"}  # older checkpoints


class OscillationTracker:
    """Per-weight state, held in memory in the narrowest exact dtypes — 7 bytes a tracked weight on a ≤ 6-bit
    grid (11 once freezing starts the code EMA):
    - w_int(t−1) and the sign of the last non-zero d in one int8, `code_direction` = 4·code + (direction + 1)
      (code in [−32, 31], direction in {−1, 0, 1}: every value in [−128, 126] stands for one pair); wider grids
      hold them apart, `previous` in the grid's integer dtype (`code_dtype`) and `last_direction` int8 (the
      attributes `previous` and `last_direction` read either layout);
    - `frequency` float32 (the m = 0.001 EMA needs float32's precision);
    - `count` int16 — one update adds at most 1, so it is widened to int32 before the update that could pass
      int16's 32 767 (`COUNT_WIDEN_AT`; runs of fewer updates never pay for int32);
    - `int_ema` float32, allocated only by `start_code_ema` (None before: no update touches it)."""

    STATE = ("momentum", "code_direction", "stored_previous", "stored_last_direction", "frequency", "count",
             "int_ema", "updates", "code_ema_from")

    def __init__(self, momentum: float = 0.001):
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"oscillation momentum must lie in (0, 1], got {momentum}")
        self.momentum = momentum
        self.code_direction: torch.Tensor | None = None  # packed layout (≤ 6-bit grids)
        self.stored_previous: torch.Tensor | None = None  # wide layout: w_int(t−1), the grid's integer dtype
        self.stored_last_direction: torch.Tensor | None = None  # wide layout: sign of the last non-zero d
        self.frequency: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.int_ema: torch.Tensor | None = None     # EMA of w_int since `start_code_ema`; None before
        self.updates = 0                 # n: frequency updates so far (host-side count, no sync)
        self.code_ema_from: int | None = None  # n when the code EMA (re)started; None = not yet

    @property
    def previous(self) -> torch.Tensor | None:
        """w_int(t−1) in an integer dtype (None before the first update)."""
        if self.code_direction is not None:
            return torch.div(self.code_direction, 4, rounding_mode="floor")
        return self.stored_previous

    @property
    def last_direction(self) -> torch.Tensor | None:
        """Sign of the last non-zero code change, int8 (0 = none yet; None before the first update)."""
        if self.code_direction is not None:
            return torch.bitwise_and(self.code_direction, 3) - 1
        return self.stored_last_direction

    @property
    def started(self) -> bool:
        return self.frequency is not None

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
        """Start (or restart) the EMA of w_int from here (freeze onset, SPEC §5): earlier codes do not count."""
        if not self.started:
            raise RuntimeError("start_code_ema() needs a tracker that has seen its first update")
        if self.int_ema is None:
            self.int_ema = torch.zeros_like(self.frequency)
        else:
            self.int_ema.zero_()
        self.code_ema_from = self.updates

    def code_ema(self) -> torch.Tensor:
        """Bias-corrected EMA of w_int since `start_code_ema` (the current codes before its first update)."""
        n = self.updates - self.code_ema_from
        if n == 0:
            return self.previous.to(torch.float32)
        return self.int_ema / (1.0 - (1.0 - self.momentum) ** n)

    @torch.no_grad()
    def update(self, w_int: torch.Tensor, qmin: int, qmax: int) -> None:
        """One step of SPEC §4 with the codes `w_int` (float or integer values on the grid [qmin, qmax])."""
        w_int = w_int.detach()
        if not w_int.is_floating_point():  # integer codes: the difference below in float, never overflowing
            w_int = w_int.float()
        if not self.started:
            if packs(qmin, qmax):
                self.code_direction = (4 * w_int + 1).to(torch.int8)  # direction 0: none yet
            else:
                self.stored_previous = w_int.to(code_dtype(qmin, qmax), copy=True)
                self.stored_last_direction = torch.zeros_like(w_int, dtype=torch.int8)
            self.frequency = torch.zeros_like(w_int, dtype=torch.float32)
            self.count = torch.zeros_like(w_int, dtype=torch.int16)
            return
        if w_int.shape != self.frequency.shape:
            raise ValueError(f"tracker got shape {tuple(w_int.shape)}, expected {tuple(self.frequency.shape)}")
        self._widen_count()
        last_direction = self.last_direction
        direction = torch.sign(w_int - self.previous).to(torch.int8)  # float codes: the difference in float
        oscillated = (direction != 0) & (direction == -last_direction)
        m = self.momentum
        self.frequency.mul_(1 - m).add_(oscillated.float(), alpha=m)
        self.count += oscillated
        last_direction = torch.where(direction != 0, direction, last_direction)
        if self.int_ema is not None:
            self.int_ema.mul_(1 - m).add_(w_int.float(), alpha=m)
        if self.code_direction is not None:
            self.code_direction.copy_(4 * w_int + last_direction + 1)
        else:
            self.stored_last_direction = last_direction
            self.stored_previous.copy_(w_int)
        self.updates += 1

    @torch.no_grad()
    def update_fused(self, weight: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, frozen=None) -> bool:
        """`update(codes, qmin, qmax)` with codes = clamp(round(w/s)) (a frozen weight's code where
        `frozen.mask`) in one in-place pass over the state (qat/kernels.py). False, touching nothing, where the
        fused path does not apply (before the first update, a grid wider than 6 bits, or no compiled kernels):
        then call `update`."""
        if self.code_direction is None:
            return False
        self._widen_count()
        from . import kernels
        extra = () if frozen is None else (frozen.mask, frozen.codes)
        done = kernels.oscillation_update_(weight.detach(), step, qmin, qmax, self.momentum, self.code_direction,
                                           self.frequency, self.count, self.int_ema, *extra)
        if done:
            self.updates += 1
        return done

    def _widen_count(self) -> None:
        """int16 `count` → int32 before an update could take it past int16's range (count ≤ updates)."""
        if self.count.dtype == torch.int16 and self.updates >= COUNT_WIDEN_AT:
            self.count = self.count.to(torch.int32)

    def state_dict(self) -> dict:
        # The state is already held in its narrowest exact dtypes (class docstring): checkpoints store it as is.
        return {k: getattr(self, k) for k in self.STATE}

    def load_state_dict(self, state: dict) -> None:
        # A checkpoint written before the packed layout (previous / last_direction apart) resumes in the wide
        # layout, exactly (the eager update then serves it).
        state = {WIDE_FIELDS.get(k, k): v for k, v in state.items()}
        for k, v in state.items():
            if k not in self.STATE:
                raise KeyError(f"oscillation tracker state has an unknown field {k!r} (a checkpoint of other code)")
            setattr(self, k, v)

    def fraction_oscillating(self, threshold: float = 0.005) -> float:
        """Share of weights whose bias-corrected oscillation frequency exceeds `threshold` (a host sync:
        logging only)."""
        if not self.started:
            return 0.0
        return float((self.bias_corrected_frequency() > threshold).float().mean())


def code_dtype(qmin: int, qmax: int) -> torch.dtype:
    """The narrowest signed integer dtype that holds every code of the grid [qmin, qmax] exactly (int8 for
    any signed grid up to 8 bits, int16 for an unsigned 8-bit one)."""
    for dtype in (torch.int8, torch.int16, torch.int32):
        if torch.iinfo(dtype).min <= qmin and qmax <= torch.iinfo(dtype).max:
            return dtype
    raise ValueError(f"no integer dtype up to int32 holds the grid [{qmin}, {qmax}]")


def stored_codes(codes: torch.Tensor | None) -> torch.Tensor | None:
    """Integer codes held in a float tensor, as the narrowest integer dtype that holds them exactly (a
    checkpoint's 1 byte a weight at ≤ 8 bits instead of 4); anything else unchanged."""
    if codes is None or not codes.is_floating_point() or codes.numel() == 0 or not torch.equal(codes, codes.round()):
        return codes
    low, high = codes.min().item(), codes.max().item()
    if low < torch.iinfo(torch.int32).min or high > torch.iinfo(torch.int32).max:
        return codes
    return codes.to(code_dtype(int(low), int(high)))


def loaded_codes(codes: torch.Tensor | None) -> torch.Tensor | None:
    """`stored_codes` undone: codes back in float32, as the quantizer computes them."""
    return codes.to(torch.float32) if codes is not None and not codes.is_floating_point() else codes

