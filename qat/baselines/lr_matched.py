"""The lr-matched LSQ control of ScaleGrad's distance-aware weight gradient (issue 17, item 4).

ScaleGrad multiplies each weight's gradient by exp(−k·Δ), Δ = |round(w/s) − w/s| ∈ [0, 0.5]. For weights spread
evenly within their bins (Δ ~ U[0, 0.5]) that lowers the mean weight gradient, and so the weights' effective
learning rate, by the factor

    E[exp(−k·Δ)] = (1 − exp(−k/2)) / (k/2)        (0.787 at k = 1: a 21 % lower weight lr)

LSQ with every weight gradient multiplied by that constant moves weights as fast on average as ScaleGrad but
without ScaleGrad's preference for weights near a level: where ScaleGrad beats this control, the effect is not a
learning-rate effect. With SGD the scaled gradient equals a scaled lr up to weight decay (added to the gradient
inside the optimizer, 1e-5 here). Applied to the same weights as ScaleGrad's factor (`scalegrad_layers`: every
quantized layer's, or the low-bit layers' only).
"""
from __future__ import annotations

import math

import torch

from ..hooks import TrainingHook, TrainState
from ..modules import quant_layers
from ..prepare.pipeline import scalegrad_max_bits
from ..recipe_registry import Part, Recipe, register_recipe


def mean_distance_factor(k: float) -> float:
    """E[exp(−kΔ)] for Δ uniform on [0, 0.5]."""
    if k <= 0:
        raise ValueError(f"distance factor k must be positive, got {k}")
    return (1.0 - math.exp(-k / 2)) / (k / 2)


class WeightGradScaleHook(TrainingHook):
    """Multiplies the weight gradient of every quantized layer of at most `max_bits` bits (None: of every quantized
    layer) by `scale` before the optimizer step."""

    def __init__(self, scale: float, max_bits: int | None = None):
        self.scale, self.max_bits = scale, max_bits

    @torch.no_grad()
    def before_optimizer_step(self, state: TrainState) -> None:
        grads = [layer.weight.grad for _, layer in quant_layers(state.model) if layer.weight.grad is not None
                 and (self.max_bits is None or layer.weight_quant.bits <= self.max_bits)]
        if grads:
            torch._foreach_mul_(grads, self.scale)

    def epoch_metrics(self, state: TrainState) -> dict:
        return {"lr_matched/weight_grad_scale": self.scale}


LR_MATCHED = Part("lr_matched", lambda m, bits, tau: WeightGradScaleHook(
    mean_distance_factor(m.dist_k), scalegrad_max_bits(m.scalegrad_layers, bits)), ("dist_k", "scalegrad_layers"))
register_recipe(Recipe("lsq-lr-matched", hooks=(LR_MATCHED,),
                       description="LSQ with weight gradients × E[exp(-kΔ)] (ScaleGrad's mean weight-lr cut; control)"))
