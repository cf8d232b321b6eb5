"""The diagnostic of docs/PROXY_STUDY.md: ScaleGrad's gradient changes on the ≤ 4-bit layers only, the 8-bit
first/last layers left to LSQ, at both call sites that set a run's gradient mode."""
import importlib.util

from torch import nn

import qat.modules
import qat.prepare.pipeline as pipeline
from helpers import REPO
from qat.modules import convert, quant_layers


def load_probe():
    spec = importlib.util.spec_from_file_location("probe", REPO / "analysis" / "lowbit_scalegrad_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def test_only_low_bit_layers_get_scalegrad():
    probe = load_probe()
    model = convert(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)), 4)
    probe.low_bit_gradient_mode(model, 0.1, 1.0)
    modes = {name: (layer.weight_quant.bits, layer.weight_quant.dist_k, layer.weight_quant.pulse_delta)
             for name, layer in quant_layers(model)}
    assert modes == {"0": (8, None, None), "2": (4, 1.0, 0.1), "4": (8, None, None)}
    # SPEC §2's own mode, for contrast: every layer
    qat.modules.set_gradient_mode(model, 0.1, 1.0)
    assert all(layer.weight_quant.dist_k == 1.0 for _, layer in quant_layers(model))


def test_the_probe_replaces_both_call_sites(monkeypatch):
    probe = load_probe()
    monkeypatch.setattr(pipeline, "set_gradient_mode", pipeline.set_gradient_mode)  # restored after the test
    monkeypatch.setattr(qat.modules, "set_gradient_mode", qat.modules.set_gradient_mode)
    probe.install()
    assert pipeline.set_gradient_mode is qat.modules.set_gradient_mode is probe.low_bit_gradient_mode
