#!/usr/bin/env python
"""Probe of docs/PROXY_STUDY.md "ScaleGrad's detector losses": the same run with ScaleGrad's gradient changes
(PulseSmooth, exp(-kΔ)) on the low-bit layers only, the 8-bit first/last layers left to plain LSQ. SPEC §2 applies
them to every quantized layer; this is a diagnostic of where the collapses come from, not a recipe.

    python analysis/lowbit_scalegrad_probe.py --model yolov8n --recipe distance --bits 4 --seed 2 --table probe_lowbit
(any `python -m qat.run` arguments; use a table of its own: the runs differ from the recipe's)
"""
from __future__ import annotations

import sys

import qat.modules
import qat.prepare.pipeline as pipeline
from qat.cli import main
from qat.modules import quant_layers

LOW_BITS = 4


def low_bit_gradient_mode(model, pulse_delta, dist_k):
    for _, layer in quant_layers(model):
        low = layer.weight_quant.bits <= LOW_BITS
        layer.weight_quant.pulse_delta = pulse_delta if low else None
        layer.weight_quant.dist_k = dist_k if low else None
        layer.input_quant.pulse_delta = pulse_delta if layer.input_quant.bits <= LOW_BITS else None


def install() -> None:
    """Both call sites: the prologue's (pipeline) and Recipe.build_structure's (imports it from qat.modules per
    call)."""
    pipeline.set_gradient_mode = qat.modules.set_gradient_mode = low_bit_gradient_mode


if __name__ == "__main__":
    install()
    sys.exit(main(sys.argv[1:], prog="analysis/lowbit_scalegrad_probe.py"))
