"""The pre-QAT pipeline of the paper's Fig. 3 (SPEC §8): fold BN → CLE + high-bias absorption →
insert quantizers and initialise steps → empirical bias correction → gradient mode of the recipe.

Shared by classification and detection, so every task and recipe starts from the same prologue.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from ..modules import convert, set_gradient_mode
from .bn_fold import fold_batchnorm
from .calibrate import calibrate_activations, init_weight_steps


@dataclass
class PrologueOptions:
    cle: bool = True
    cle_relu6: str = "clip"          # a chain's ReLU6 → per-channel clip (exact) or "relu" (DFQ)
    bias_correction: bool = True
    quantize_first_last: bool = False
    first_last_bits: int = 8
    calib_batches: int = 32
    bias_correction_batches: int = 4  # calibration batches whose mean output error bias correction removes


def float_prologue(model: nn.Module, example_input: torch.Tensor, calib: list[torch.Tensor],
                   opts: PrologueOptions) -> dict:
    """Steps 1–2 on the FP model, in place: BN folding, then CLE with high-bias absorption.

    BN's (β, γ) are captured before folding so that absorption uses SPEC's max(0, β − 3|γ|). Folding and
    equalization keep the output up to rounding or raise `PrologueError` (a ValueError) naming the layer pair;
    absorption is DFQ's approximation (inexact at the zero padding of a k > 1 conv2 and below c), its output
    change is reported (`bias_absorption.rel_change`: 1.7e-2 on the smoke MobileNetV2, top-1 +0.4).
    """
    bn_stats = None
    if opts.cle:
        from .cle import absorb_high_bias, capture_bn_stats, equalize
        bn_stats = capture_bn_stats(model, example_input)
    report = {"bn_folded": fold_batchnorm(model, example_input)}
    if opts.cle:
        # Pairs are verified in float32: float64 convolutions on a CPU cost minutes per model, and the probe's
        # power-of-two scalings leave a valid pair bit-identical in any dtype (invalid ones change it by ≥ 0.1).
        report["cle"] = equalize(model, example_input, bn_stats=bn_stats, probe_dtype=None,
                                 relu6=opts.cle_relu6)
        report["bias_absorption"] = absorb_high_bias(model, example_input, bn_stats=bn_stats, probe_dtype=None,
                                                     pairs=report["cle"]["pairs"], calib_batches=calib[:4] or None)
    return report


# Where ScaleGrad's gradients act; the first is the default (MethodConfig.scalegrad_layers; DEVIATIONS 2a).
SCALEGRAD_LAYERS = ("low-bit", "all")


def quantize_prologue(model: nn.Module, bits: int, calib: list[torch.Tensor], opts: PrologueOptions, *,
                      per_channel: bool = False, pulse_delta: float | None = None, dist_k: float | None = None,
                      scalegrad_layers: str = SCALEGRAD_LAYERS[0], exclude: Iterable[str] = (),
                      high_precision: Iterable[str] | None = None,
                      forward: Callable | None = None) -> dict:
    """Steps 3–4: insert quantizers, calibrate/initialise steps, bias correction; set ScaleGrad mode."""
    convert(model, bits, first_last_bits=opts.first_last_bits, quantize_first_last=opts.quantize_first_last,
            per_channel=per_channel, exclude=exclude, high_precision=high_precision)
    init_weight_steps(model)
    report = {"calib_batches": calibrate_activations(model, calib, forward)}
    if opts.bias_correction:
        from .bias_correction import correct_bias
        report["bias_correction"] = correct_bias(model, calib, forward=forward,
                                                  max_batches=opts.bias_correction_batches)
    set_gradient_mode(model, pulse_delta, dist_k, scalegrad_max_bits(scalegrad_layers, bits))
    return report


def scalegrad_max_bits(scalegrad_layers: str, bits: int) -> int | None:
    """`set_gradient_mode`'s bound for MethodConfig.scalegrad_layers: "low-bit" = the layers at the run's `bits`
    (not the 8-bit first / last layers), "all" = every quantized layer (SPEC §2)."""
    if scalegrad_layers not in SCALEGRAD_LAYERS:
        raise ValueError(f"scalegrad_layers must be one of {SCALEGRAD_LAYERS}, got {scalegrad_layers!r}")
    return bits if scalegrad_layers == "low-bit" else None



def build_structure(model: nn.Module, bits: int, example_input: torch.Tensor, opts: PrologueOptions, *,
                    per_channel: bool = False, exclude: Iterable[str] = (),
                    high_precision: Iterable[str] | None = None) -> None:
    """The quantized module tree without any data-dependent initialisation, for loading a checkpoint.

    CLE's ReLU6 swap (for a ChannelClip or ReLU) is structural, so it is replayed (its weight changes are overwritten by the load).
    """
    float_prologue(model, example_input, [example_input], opts)
    convert(model, bits, first_last_bits=opts.first_last_bits, quantize_first_last=opts.quantize_first_last,
            per_channel=per_channel, exclude=exclude, high_precision=high_precision)
