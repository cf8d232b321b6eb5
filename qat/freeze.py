"""Iterative weight freezing (SPEC §5; Nagel et al. 2022) — the Freeze baseline and AFW's first half.

A weight whose (bias-corrected, SPEC §4) oscillation frequency exceeds f_th(t) is frozen: its integer code
is fixed to round(EMA of its w_int), that EMA started when freezing switches on (bias-corrected), and its
latent value gets no task gradient. Frozen stays frozen. f_th(t): off for the first 25% of iterations, then
cosine-decayed from 0.1 to 0.01 (4-bit) / 0.011 (3-bit). A frozen element feeds its step size like any
other: x̂ = s·code, with LSQ's gradient scale g on its contribution to dL/ds.
"""
from __future__ import annotations

import math

import torch

from .functional import STEP_EPS
from .hooks import TrainingHook, TrainState
from .modules import low_bit_layers
from .oscillation import OscillationTracker, loaded_codes, stored_codes
from .recipe_registry import Part, Recipe, register_recipe


def freeze_threshold(progress: float, bits: int, start: float = 0.1, off_fraction: float = 0.25) -> float | None:
    """f_th at training progress t/T ∈ [0, 1]; None while freezing is off."""
    if progress < off_fraction:
        return None
    end = 0.011 if bits <= 3 else 0.01
    phase = (progress - off_fraction) / (1 - off_fraction)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(1.0, phase)))


class FrozenCodes:
    """Mask of frozen weights and their fixed integer codes, applied to a layer's quantized weight."""

    def __init__(self, like: torch.Tensor):
        self.mask = torch.zeros_like(like, dtype=torch.bool)
        self.codes = torch.zeros_like(like)

    def apply(self, w_hat: torch.Tensor, step: torch.Tensor, grad_scale: float) -> torch.Tensor:
        """x̂ with frozen elements replaced by s·code. torch.where gives them no gradient to the latent
        weight; their step gradient, code·dL/dx̂, is scaled by LSQ's g like every other element's (Nagel's
        code multiplies the frozen integer by the gradient-scaled step)."""
        s = step.clamp_min(STEP_EPS)
        scaled_step = s.detach() + (s - s.detach()) * grad_scale  # value s, gradient g·(dL/ds)
        return torch.where(self.mask, scaled_step * self.codes, w_hat)

    def codes_with_frozen(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.codes, codes)

    @torch.no_grad()
    def freeze(self, new: torch.Tensor, codes: torch.Tensor) -> None:
        new = new & ~self.mask
        self.codes = torch.where(new, codes, self.codes)
        self.mask |= new

    def state_dict(self) -> dict:
        return {"mask": self.mask, "codes": stored_codes(self.codes)}

    def load_state_dict(self, state: dict) -> None:
        self.mask, self.codes = state["mask"], loaded_codes(state["codes"])


def attach_trackers(model, momentum: float = 0.001, max_bits: int = 4) -> None:
    """Give every quantized layer at ≤ max_bits an OscillationTracker (idempotent)."""
    for _, layer in low_bit_layers(model, max_bits):
        if layer.weight_quant.tracker is None:
            layer.weight_quant.tracker = OscillationTracker(momentum)


def is_depthwise(layer) -> bool:
    return getattr(layer, "groups", 1) > 1 and layer.groups == getattr(layer, "in_channels", 0)


class OscillationTrackingHook(TrainingHook):
    """Installs trackers and logs per-layer oscillation statistics each epoch (SPEC §4).

    Besides the EMA statistic it counts each weight's oscillations over the last `window` share of the
    iterations (from the counts at the window's start): `osc/late_fraction` is the share of low-bit weights
    whose rate there, oscillations per iteration, exceeds the final freeze threshold f_th(T) of their bit-width
    (0.01 / 0.011) — the phenomenon the methods target, measured where training should have settled.
    Depthwise layers and the rest are reported apart (`osc/late_fraction_depthwise`, `_other`)."""

    def __init__(self, momentum: float = 0.001, threshold: float = 0.005, window: float = 0.2):
        self.momentum, self.threshold, self.window = momentum, threshold, window
        self.model = None
        self.window_start: int | None = None       # iteration t at which the late window began
        self.counts_at_start: dict[str, torch.Tensor] = {}

    def on_train_start(self, state: TrainState) -> None:
        self.model = state.model
        attach_trackers(state.model, self.momentum)

    @torch.no_grad()
    def after_optimizer_step(self, state: TrainState) -> None:
        if self.window_start is not None or state.progress < 1 - self.window:
            return
        self.window_start = state.iteration
        self.counts_at_start = {name: layer.weight_quant.tracker.count.clone()  # a copy: count grows in place
                                for name, layer in low_bit_layers(state.model)
                                if layer.weight_quant.tracker is not None and layer.weight_quant.tracker.count is not None}

    def late_metrics(self, state: TrainState) -> dict:
        span = state.iteration - (self.window_start or 0)
        if self.window_start is None or span <= 0:
            return {}
        above = {"depthwise": [0, 0], "other": [0, 0]}
        for name, layer in low_bit_layers(state.model):
            if name not in self.counts_at_start:
                continue
            rate = (layer.weight_quant.tracker.count - self.counts_at_start[name]).float() / span
            kind = above["depthwise" if is_depthwise(layer) else "other"]
            kind[0] += int((rate > freeze_threshold(1.0, layer.weight_quant.bits)).sum())
            kind[1] += rate.numel()
        total = sum(n for _, n in above.values())
        out = {"osc/late_iterations": span, "osc/late_fraction": sum(k for k, _ in above.values()) / max(1, total)}
        out.update({f"osc/late_fraction_{kind}": k / n for kind, (k, n) in above.items() if n})
        return out

    def epoch_metrics(self, state: TrainState) -> dict:
        out, fractions = {}, []
        for name, layer in low_bit_layers(state.model):
            tracker = layer.weight_quant.tracker
            if tracker is None or tracker.frequency is None:
                continue
            frac = tracker.fraction_oscillating(self.threshold)
            fractions.append((frac, tracker.frequency.numel()))
            out[f"osc/{name}/fraction"] = frac
            out[f"osc/{name}/mean_frequency"] = float(tracker.frequency.mean())
        if fractions:
            total = sum(n for _, n in fractions)
            out["osc/fraction_oscillating"] = sum(f * n for f, n in fractions) / total
        out.update(self.late_metrics(state))
        return out

    def state_dict(self) -> dict:
        if self.model is None:
            return {}
        state = {name: layer.weight_quant.tracker.state_dict() for name, layer in low_bit_layers(self.model)
                 if layer.weight_quant.tracker is not None}
        if self.window_start is not None:
            state[LATE_WINDOW_KEY] = {"start": self.window_start, "counts": self.counts_at_start}
        return state

    def load_state_dict(self, state: dict) -> None:
        late = state.get(LATE_WINDOW_KEY)
        if late is not None:
            self.window_start, self.counts_at_start = late["start"], late["counts"]
        for name, layer in low_bit_layers(self.model):
            if name in state:
                layer.weight_quant.tracker = OscillationTracker()
                layer.weight_quant.tracker.load_state_dict(state[name])


LATE_WINDOW_KEY = "_late_window"  # not a layer name: the late window's start and its counts


def without_layer_statistics(metrics: dict) -> dict:
    """A hook's epoch metrics less the per-layer oscillation ones (`osc/<layer>/...`): what a run's result keeps."""
    return {k: v for k, v in metrics.items() if not (k.startswith("osc/") and k.count("/") > 1)}


class FreezeHook(TrainingHook):
    """After each optimizer step, freeze the weights whose oscillation frequency exceeds f_th(t)."""

    def __init__(self, bits: int, momentum: float = 0.001, start_threshold: float = 0.1, active_from: int = 0):
        # active_from: first iteration at which freezing may happen (ours: τ, the EAD phase)
        self.bits, self.momentum, self.start_threshold = bits, momentum, start_threshold
        self.active_from = active_from
        self.model = None

    def on_train_start(self, state: TrainState) -> None:
        self.model = state.model
        attach_trackers(state.model, self.momentum)
        for _, layer in low_bit_layers(state.model):
            if layer.weight_quant.frozen is None:
                layer.weight_quant.frozen = FrozenCodes(layer.weight.detach())

    @torch.no_grad()
    def after_optimizer_step(self, state: TrainState) -> None:
        threshold = freeze_threshold(state.progress, self.bits, self.start_threshold)
        if threshold is None or state.iteration < self.active_from:
            return
        for _, layer in low_bit_layers(state.model):
            wq = layer.weight_quant
            tracker = wq.tracker
            if tracker is None or tracker.frequency is None:
                continue
            if not tracker.code_ema_started:  # freezing switches on now: the code EMA starts here
                tracker.start_code_ema()
            codes = torch.clamp(torch.round(tracker.code_ema()), wq.qmin, wq.qmax)
            wq.frozen.freeze(tracker.bias_corrected_frequency() > threshold, codes)

    def epoch_metrics(self, state: TrainState) -> dict:
        masks = [layer.weight_quant.frozen.mask for _, layer in low_bit_layers(state.model)
                 if layer.weight_quant.frozen is not None]
        if not masks:
            return {}
        return {"freeze/fraction_frozen": float(sum(m.sum() for m in masks)) / sum(m.numel() for m in masks)}

    def state_dict(self) -> dict:
        return {name: layer.weight_quant.frozen.state_dict() for name, layer in low_bit_layers(self.model)
                if layer.weight_quant.frozen is not None}

    def load_state_dict(self, state: dict) -> None:
        for name, layer in low_bit_layers(self.model):
            if name in state:
                layer.weight_quant.frozen = FrozenCodes(layer.weight.detach())
                layer.weight_quant.frozen.load_state_dict(state[name])


FREEZE = Part("freeze", lambda m, bits, tau: FreezeHook(bits, m.osc_momentum), ("osc_momentum",))
# AFW's: oscillating weights frozen from τ on, during the EAD phase
FREEZE_AFTER_TAU = Part("freeze_after_tau", lambda m, bits, tau: FreezeHook(bits, m.osc_momentum, active_from=tau),
                        ("osc_momentum",))
register_recipe(Recipe("freeze", hooks=(FREEZE,), description="Iterative weight freezing (Nagel et al. 2022)"))
