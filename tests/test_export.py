"""Deployment export (qat/export): QDQ ONNX checked by ONNX Runtime, bit-packed checkpoint, size report."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import REPO, run_train
from onnx import numpy_helper
from torch import nn

from qat.export.check import onnx_session
from qat.export.onnx_qdq import METADATA_KEY, export_onnx
from qat.export.packed import pack_bits, unpack_bits
from qat.export.run_model import ExportError
from qat.freeze import FrozenCodes
from qat.models import build_model, model_names
from qat.modules import convert, quant_layers

QAT = ["--preset", "smoke", "--no-wandb", "--no-cle", "--no-bias-correction"]


def _ready(model: nn.Module, act_step: float = 0.05) -> nn.Module:
    """A converted model with LSQ-initialised weight steps and fixed activation steps, in eval mode."""
    for _, layer in quant_layers(model):
        layer.weight_quant.init_step(layer.weight)
        layer.input_quant.step.data.fill_(act_step)
    return model.eval()


def _onnx_outputs(path, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(onnx_session(path).run(None, {"input": x.numpy()})[0])


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_bits_round_trips_in_b_bits_per_code(bits):
    lo = -(2 ** (bits - 1))
    codes = np.random.default_rng(bits).integers(lo, -lo, size=1001)
    packed = pack_bits(codes, bits, lo)
    assert packed.dtype == np.uint8 and packed.size == -(-1001 * bits // 8)
    assert np.array_equal(unpack_bits(packed, bits, lo, 1001), codes)
    with pytest.raises(ValueError):
        pack_bits(np.array([-lo]), bits, lo)  # qmax + 1 does not fit


@pytest.mark.parametrize("name", model_names())
def test_every_registry_classifier_exports_and_ort_matches(name, tmp_path):
    torch.manual_seed(0)
    model = _ready(convert(build_model(name, "proxy"), 3))
    x = torch.randn(4, 1, 32, 32) * 2  # beyond the activation ranges: the clamps must act
    with torch.no_grad():
        ref = model(x)
    path = export_onnx(model, x[:1], tmp_path / "m.onnx")
    out = _onnx_outputs(path, x)
    assert torch.equal(out.argmax(1), ref.argmax(1))
    assert (out - ref).abs().max() <= 1e-3 * ref.abs().max()


def test_weights_are_integer_initializers_with_their_bits_and_frozen_codes(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    convert(model, 3, per_channel=True)  # the first and last layers at 8 bits, both per output channel
    model[0].weight_quant.bits = model[0].input_quant.bits = 3
    _ready(model)
    conv = model[0]
    frozen = FrozenCodes(conv.weight.detach())  # freeze a few weights at codes their latent would not round to
    frozen.freeze(torch.rand_like(conv.weight) < 0.3, torch.full_like(conv.weight, -4.0))
    conv.weight_quant.frozen = frozen
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
    path = export_onnx(model, x[:1], tmp_path / "m.onnx")
    proto = onnx.load(path)
    inits = {t.name: t for t in proto.graph.initializer}
    conv_codes = inits["0.weight_quant.codes"]
    assert conv_codes.data_type == onnx.TensorProto.INT4
    expected = frozen.codes_with_frozen(conv.weight_quant.codes(conv.weight))
    assert np.array_equal(numpy_helper.to_array(conv_codes).astype(np.int64), expected.numpy().astype(np.int64))
    assert inits["3.weight_quant.codes"].data_type == onnx.TensorProto.INT8
    assert list(inits["0.weight_quant.scale"].dims) == [4]  # per-channel, axis 0
    assert not any(t.data_type == onnx.TensorProto.FLOAT and t.name.endswith(".weight") for t in proto.graph.initializer
                   if t.name.startswith("0.") or t.name.startswith("3."))
    meta = json.loads(next(p.value for p in proto.metadata_props if p.key == METADATA_KEY))
    assert meta["0.input_quant"]["bits"] == 3 and (meta["0.input_quant"]["qmin"], meta["0.input_quant"]["qmax"]) == (0, 7)
    assert proto.opset_import[0].version == 21
    assert torch.allclose(_onnx_outputs(path, x), ref, atol=1e-5, rtol=1e-4)


def test_a_layer_that_cannot_be_exported_is_named(tmp_path):
    class Spectrum(nn.Module):
        def forward(self, x):
            return torch.fft.fft2(x).real

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.ReLU(), Spectrum()), nn.Flatten(),
                          nn.Linear(4 * 30 * 30, 10))
    _ready(convert(model, 4))
    with pytest.raises(ExportError, match=r"layer 1\.1 \(Spectrum\) cannot be exported.*fft"):
        export_onnx(model, torch.rand(1, 1, 32, 32), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def _export(args, env):
    return subprocess.run([sys.executable, "-m", "qat.export", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_bad_run_directories_get_one_error_line(smoke_env, tmp_path):
    for name, config in [("det", {"model": "yolov8n", "recipe": "lsq", "bits": 4}),
                         ("ssd", {"model": "ssdlite_mobilenetv2", "recipe": "lsq", "bits": 4})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    fp_run = next(p.parent for p in Path(smoke_env["QAT_RUNS"]).rglob("config.json") if "/fp/" in str(p))
    cases = [(tmp_path / "nothing", "not a run directory"), (tmp_path / "det", "has no final.pt"),
             (tmp_path / "ssd", "the exporter handles the registry classifiers"), (fp_run, "FP run")]
    for run_dir, needle in cases:
        proc = _export([run_dir], smoke_env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


def test_a_finished_smoke_run_exports_and_ort_agrees(smoke_env, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "export"
    run_train([*QAT, "--recipe", "freeze", "--bits", "3", "--out", str(run_dir)], smoke_env)
    proc = _export([run_dir, "--out", out], smoke_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "export_report.json").read_text())
    check, sizes = report["check"], report["sizes"]
    result = json.loads((run_dir / "result.json").read_text())
    assert check["images"] == 256
    assert check["torch_top1"] == pytest.approx(result["top1"], abs=1e-9)  # the model the run evaluated
    assert abs(check["onnx_top1"] - check["torch_top1"]) <= 0.1
    assert check["relative_logit_difference"] <= check["logit_tolerance"]
    assert check["packed_identical"] is True
    for bits, row in sizes["by_bits"].items():  # ⌈n·b/8⌉ bytes per layer: b/32 of FP32 up to the rounding
        assert row["ratio"] == pytest.approx(int(bits) / 32, rel=1e-3)
    assert set(sizes["by_bits"]) == {"3", "8"}
    assert sizes["packed_file_bytes"] < sizes["fp32_model_bytes"] * 0.25
    assert sizes["onnx_file_bytes"] == (out / "model.onnx").stat().st_size
    assert "packed checkpoint round trip identical: True" in (out / "export_report.md").read_text()


@pytest.mark.parametrize("name", ["yolov8n", "yolov9t"])
def test_ultralytics_detectors_export_their_raw_head_outputs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    from qat.detection.ultralytics_qat import build_detector, dfl_convs, high_precision_layers
    from qat.export.detector import OUTPUT_NAMES, RawHeadOutputs
    from qat.prepare.pipeline import PrologueOptions, build_structure
    torch.manual_seed(0)
    detector = build_detector(name, nc=10)
    x = torch.rand(2, 3, 64, 64)
    build_structure(detector, 4, x[:1], PrologueOptions(cle=False, bias_correction=False), exclude=dfl_convs(detector),
                    high_precision=high_precision_layers(detector))  # as a QAT detection run builds it
    model = _ready(RawHeadOutputs(detector))
    with torch.no_grad():
        ref = model(x)
    path = export_onnx(model, x[:1], tmp_path / "m.onnx", output_names=OUTPUT_NAMES)
    outs = onnx_session(path).run(None, {"input": x.numpy()})
    assert [o.shape for o in outs] == [tuple(r.shape) for r in ref]
    for out, r in zip(outs, ref):
        assert (torch.from_numpy(out) - r).abs().max() <= 1e-3 * r.abs().max()
    assert not any(isinstance(m, nn.Conv2d) and not hasattr(m, "weight_quant") and not n.endswith("dfl.conv")
                   for n, m in detector.named_modules())


@pytest.mark.slow
def test_a_finished_smoke_detector_run_exports_and_ort_agrees(dirs, monkeypatch, capsys):
    from qat.data.fmnist_det import FMNISTDetConfig, build_fmnist_det
    from qat.config import RunConfig
    from qat.run import run
    from qat.export.__main__ import main
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(dirs / "yolo"))
    ds = build_fmnist_det(FMNISTDetConfig(train_size=16, val_size=8, canvas=64, min_size=12, max_size=40, seed=2),
                          dirs / "data")
    cfg = RunConfig(model="yolov8n", recipe="lsq", bits=3, preset="smoke", data=str(ds.yaml),
                          bias_correction=False, wandb=False, out=str(dirs / "run"))
    run(cfg)
    assert main([str(cfg.run_dir), "--out", str(dirs / "export")]) == 0, capsys.readouterr().err
    report = json.loads((dirs / "export" / "export_report.json").read_text())
    check = report["check"]
    assert check["images"] == 8 and set(check["outputs"]) == {"boxes", "scores"}
    assert check["relative_logit_difference"] <= check["logit_tolerance"] and check["packed_identical"] is True
    assert {b: r["ratio"] for b, r in report["sizes"]["by_bits"].items()} == pytest.approx({"3": 3 / 32, "8": 8 / 32},
                                                                                         rel=1e-3)


def test_ort_check_keeps_the_float_bias_the_fake_quant_model_uses(tmp_path):
    """A bias of 0.4 at s_x·s_w = 1 before a quantizer of step 0.5: the float bias gives code 2k+1, a bias rounded
    to int32 (ONNX Runtime's WeightBiasQuantization) 2k. The check's session must compute the former."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1))
    convert(model, 4, quantize_first_last=True)
    with torch.no_grad():
        model[0].weight.fill_(1.0), model[0].bias.fill_(0.4), model[1].weight.fill_(1.0), model[1].bias.zero_()
        model[0].weight_quant.step.fill_(1.0), model[0].input_quant.step.fill_(1.0)
        model[1].weight_quant.step.fill_(1.0), model[1].input_quant.step.fill_(0.5)
    x = torch.arange(8.0).view(2, 1, 2, 2)
    with torch.no_grad():
        ref = model.eval()(x)
    path = export_onnx(model, x[:1], tmp_path / "m.onnx")
    assert torch.equal(_onnx_outputs(path, x), ref)
