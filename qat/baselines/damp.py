"""Oscillation dampening (SPEC §7 "Damp"; Nagel et al. 2022, "Overcoming Oscillations in QAT").

An extra loss pulls each latent weight towards the centre of its quantization bin:

    L_damp(t) = λ(t) · Σ_layers agg( (w_q.detach() − clamp(w, s·qmin, s·qmax))² ),
    w_q = s · clamp(round(w/s), qmin, qmax)

with "kernel_mean" aggregation (sum over output channels of the mean over the rest of the kernel)
and λ(t) = 0 for the first 25% of the iterations, then cosine-annealed from 0 up to λ_final = 0.1.
These are the settings of the reference code (Qualcomm-AI-research/oscillations-qat:
`utils/qat_utils.py::dampening_loss`, `--oscillations-dampen-weight 0 --oscillations-dampen-weight-final
0.1 --oscillations-dampen-anneal-start 0.25 --oscillations-dampen-aggregation kernel_mean`).

Decisions (docs/DEVIATIONS.md):
- Step sizes get no gradient from this loss. In the reference code the clamp bounds s·qmin, s·qmax
  depend on the learnable scale, but the only elements where they enter the loss are clipped ones,
  whose target w_q is exactly s·qmin (s·qmax); the derivative 2·(s·q − w_q)·q is therefore identically
  zero. Detaching s here computes the same gradients without building that graph.
- Layers: every quantized layer whose weight quantizer is enabled, the 8-bit first/last layers
  included, because the reference code sums over every quantized ("hijacked") layer. `max_bits=4`
  restricts it to the low-bit layers.
- The reference code quantizes the raw conv weight with BN unfolded; our pipeline folds BN before
  QAT, so the loss sees the folded weight (a different regime; see docs/DEVIATIONS.md).
"""
from __future__ import annotations

import math

import torch

from ..functional import STEP_EPS
from ..hooks import TrainingHook, TrainState
from ..modules import quant_layers
from ..recipe_registry import Part, Recipe, register_recipe


def dampening_weight(progress: float, final_weight: float = 0.1, start: float = 0.25,
                     initial_weight: float = 0.0) -> float:
    """λ at training progress t/T: `initial_weight` before `start`, then a half cosine up to
    `final_weight` at t = T (the reference code's CosineTempDecay with temp_range=(0, 0.1))."""
    if progress < start:
        return initial_weight
    phase = min(1.0, (progress - start) / max(1e-12, 1.0 - start))
    return final_weight + 0.5 * (initial_weight - final_weight) * (1.0 + math.cos(math.pi * phase))


def dampening_loss(weight: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int,
                   aggregation: str = "kernel_mean") -> torch.Tensor:
    """agg((w_q.detach() − clamp(w, s·qmin, s·qmax))²) for one layer; gradient reaches `weight` only."""
    s = step.detach().clamp_min(STEP_EPS)
    with torch.no_grad():
        w_q = s * torch.clamp(torch.round(weight / s), qmin, qmax)
    w_clip = torch.clamp(weight, s * qmin, s * qmax)
    loss = (w_q - w_clip) ** 2
    if aggregation == "kernel_mean":
        return loss.sum(0).mean()
    if aggregation == "sum":
        return loss.sum()
    if aggregation == "mean":
        return loss.mean()
    raise ValueError(f"dampening: unknown aggregation {aggregation!r} (kernel_mean, sum, mean)")


class DampeningHook(TrainingHook):
    """Adds λ(t)·L_damp to the task loss of each iteration (nothing while λ(t) = 0)."""

    def __init__(self, final_weight: float = 0.1, start: float = 0.25, aggregation: str = "kernel_mean",
                 max_bits: int = 8):
        if aggregation not in ("kernel_mean", "sum", "mean"):
            raise ValueError(f"dampening: unknown aggregation {aggregation!r} (kernel_mean, sum, mean)")
        self.final_weight, self.start, self.aggregation, self.max_bits = final_weight, start, aggregation, max_bits
        self._last_weight = 0.0

    def layers(self, model):
        return [layer for _, layer in quant_layers(model)
                if layer.weight_quant.enabled and layer.weight_quant.bits <= self.max_bits]

    def loss(self, model) -> torch.Tensor:
        """Σ_layers agg(...) without λ (for tests and logging)."""
        terms = [dampening_loss(layer.weight, layer.weight_quant.step, layer.weight_quant.qmin,
                                layer.weight_quant.qmax, self.aggregation) for layer in self.layers(model)]
        return torch.stack(terms).sum()

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        lam = dampening_weight(state.progress, self.final_weight, self.start)
        self._last_weight = lam
        if lam == 0.0:
            return None
        return lam * self.loss(state.model)

    def epoch_metrics(self, state: TrainState) -> dict:
        return {"damp/weight": self._last_weight}


DAMP = Part("damp", lambda m, bits, tau: DampeningHook(final_weight=m.damp_weight), ("damp_weight",))
register_recipe(Recipe("damp", hooks=(DAMP,), description="Oscillation dampening (Nagel et al. 2022)"))
