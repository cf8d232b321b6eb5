"""Quantized Conv2d / Linear and `convert`, which puts them into any torchvision / timm CNN (SPEC §1).

Every Conv2d (grouped and depthwise included) and Linear gets a weight quantizer and a quantizer on
its INPUT activation. The first and last layers run at `first_last_bits` (8 by default, LSQ practice)
unless `quantize_first_last=True`.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .functional import fake_quant_recipe, recompute_saved
from .quantizer import ActQuantizer, WeightQuantizer


class QuantLayerMixin:
    weight_quant: WeightQuantizer
    input_quant: ActQuantizer

    def _attach_quantizers(self, weight_bits: int, act_bits: int, per_channel: bool) -> None:
        self.weight_quant = WeightQuantizer(weight_bits, self.weight.shape, per_channel)
        self.input_quant = ActQuantizer(act_bits)

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quant(self.weight)


class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_hat, w_hat, q = self.input_quant(x), self.quantized_weight(), self.input_quant
        if not torch.is_grad_enabled():  # nothing is saved (evaluation, export: its quantizers are markers)
            return self._conv_forward(x_hat, w_hat, self.bias)
        # The conv would keep x̂ for its weight gradient on top of x, and ŵ for its input gradient on top of w:
        # keep their recipes instead.
        x_recipe = fake_quant_recipe(x, q.step, q.qmin, q.qmax) if x_hat is not x else None
        with recompute_saved((x_hat, x_recipe), (w_hat, self.weight_quant.recompute_recipe(self.weight))):
            return self._conv_forward(x_hat, w_hat, self.bias)


class QuantLinear(QuantLayerMixin, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quant(x), self.quantized_weight(), self.bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)


def _quantized_copy(layer: nn.Module, weight_bits: int, act_bits: int, per_channel: bool) -> nn.Module:
    if isinstance(layer, nn.Conv2d):
        q = QuantConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                        layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                        layer.padding_mode, device=layer.weight.device, dtype=layer.weight.dtype)
    else:
        q = QuantLinear(layer.in_features, layer.out_features, layer.bias is not None,
                        device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        q.weight.copy_(layer.weight)
        if layer.bias is not None:
            q.bias.copy_(layer.bias)
    q._attach_quantizers(weight_bits, act_bits, per_channel)
    q.train(layer.training)
    return q


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear layers in registration order (for torchvision/timm CNNs: execution order)."""
    return [(n, m) for n, m in model.named_modules()
            if type(m) in (nn.Conv2d, nn.Linear) or isinstance(m, QUANT_LAYERS)]


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def convert(model: nn.Module, bits: int, *, first_last_bits: int = 8, quantize_first_last: bool = False,
            per_channel: bool = False, exclude: Iterable[str] = (),
            high_precision: Iterable[str] | None = None) -> nn.Module:
    """Replace every Conv2d/Linear of `model` (in place) by its quantized version and return `model`.

    `high_precision`: names of the layers kept at `first_last_bits`; default the first and the last
    quantizable layer. `exclude`: names left in floating point (e.g. YOLO's DFL conv).
    """
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer between 2 and 8, got {bits!r}")
    exclude = set(exclude)
    layers = [(n, m) for n, m in quantizable_layers(model) if n not in exclude]
    if not layers:
        raise ValueError("convert: the model has no Conv2d or Linear layer to quantize")
    if high_precision is None:
        high_precision = {layers[0][0], layers[-1][0]}
    high_precision = set() if quantize_first_last else set(high_precision)
    for name, layer in layers:
        if isinstance(layer, QUANT_LAYERS):
            raise ValueError(f"convert: layer {name!r} is already quantized")
        b = first_last_bits if name in high_precision else bits
        set_submodule(model, name, _quantized_copy(layer, b, b, per_channel))
    return model


def quant_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of every quantized layer, in registration order."""
    for name, m in model.named_modules():
        if isinstance(m, QUANT_LAYERS):
            yield name, m


def low_bit_layers(model: nn.Module, max_bits: int = 4) -> list[tuple[str, nn.Module]]:
    """Quantized layers whose weights use at most `max_bits` (where oscillations are tracked)."""
    return [(n, m) for n, m in quant_layers(model) if m.weight_quant.bits <= max_bits]


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All step sizes (kept out of weight decay)."""
    return [p for n, p in model.named_parameters() if n.endswith(".step")]


def set_quantizers_enabled(model: nn.Module, enabled: bool) -> None:
    for _, layer in quant_layers(model):
        layer.weight_quant.enabled = enabled
        layer.input_quant.enabled = enabled


def set_gradient_mode(model: nn.Module, pulse_delta: float | None, dist_k: float | None,
                      max_bits: int | None = None) -> None:
    """ScaleGrad (SPEC §2): PulseSmooth on weight and activation steps; exp(-kΔ) on weights only. `max_bits`:
    only on quantizers of at most that many bits (the others keep LSQ's gradients); None: on every quantizer."""
    def on(quantizer) -> bool:
        return max_bits is None or quantizer.bits <= max_bits
    for _, layer in quant_layers(model):
        layer.weight_quant.pulse_delta = pulse_delta if on(layer.weight_quant) else None
        layer.weight_quant.dist_k = dist_k if on(layer.weight_quant) else None
        layer.input_quant.pulse_delta = pulse_delta if on(layer.input_quant) else None
