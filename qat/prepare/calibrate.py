"""Quantizer initialisation (SPEC §1): moving-average min-max activation ranges, LSQ weight steps."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..modules import quant_layers


@torch.no_grad()
def calibrate_activations(model: nn.Module, batches: Iterable[torch.Tensor],
                          forward: Callable[[nn.Module, torch.Tensor], object] | None = None) -> int:
    """Observe each input quantizer's range over `batches` in FP (weights unquantized), then set
    the activation steps and grid signedness. Returns the number of batches seen.

    Under torch.distributed the observed min/max are all-reduced, so every rank gets the same steps.
    """
    layers = [layer for _, layer in quant_layers(model)]
    was_training = model.training
    model.eval()
    for layer in layers:
        layer.input_quant.observing = True
        layer.weight_quant.enabled = False
    seen = 0
    try:
        for x in batches:
            (forward or (lambda m, b: m(b)))(model, x)
            seen += 1
    finally:
        for layer in layers:
            layer.input_quant.observing = False
            layer.weight_quant.enabled = True
        model.train(was_training)
    if seen == 0:
        raise ValueError("calibration got no batches")
    for layer in layers:
        layer.input_quant.init_step_from_range()
    return seen


@torch.no_grad()
def init_weight_steps(model: nn.Module) -> None:
    """LSQ init s0 = 2·mean|w|/sqrt(qmax) for every weight quantizer."""
    for _, layer in quant_layers(model):
        layer.weight_quant.init_step(layer.weight)
