"""SSD-MobileNetV2 and YOLOX: the detector contract, conversion coverage, the COCO-format batches, and
whole runs through the shared training loop (smoke preset, paper preset on a tiny COCO-format set)."""
import json

import pytest
import torch
from torch import nn

from qat.data.detection import CocoDetectionSet, DetectionBatches, layout
from qat.data.fmnist_det import FMNISTDetConfig, build_fmnist_det
from qat.detection.torch_detectors import TORCH_DETECTORS, build_torch_detector
from qat.modules import QuantConv2d, quant_layers
from qat.prepare.pipeline import PrologueOptions, float_prologue, quantize_prologue

pytest.importorskip("yolox")

TINY = FMNISTDetConfig(train_size=16, val_size=8, canvas=64, min_size=12, max_size=40, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_fmnist_det(TINY, tmp_path_factory.mktemp("fmnist_det"))


def targets():
    return [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [33.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([2, 7])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


@pytest.mark.parametrize("name", TORCH_DETECTORS)
def test_detector_contract_loss_and_detections(name):
    torch.manual_seed(0)
    model = build_torch_detector(name, num_classes=10, imgsz=64)
    x = torch.rand(2, 3, 64, 64)
    model.train()
    loss = model(x, targets())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "head" in n and n.endswith("weight"))
    model.eval()
    dets = model.detect(x)
    assert len(dets) == 2
    for d in dets:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"]) == len(d["labels"])
        assert ((d["labels"] >= 0) & (d["labels"] < 10)).all()


@pytest.mark.parametrize("name", TORCH_DETECTORS)
def test_prologue_folds_every_bn_and_quantizes_every_conv(name):
    torch.manual_seed(0)
    model = build_torch_detector(name, num_classes=10, imgsz=64).eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    calib = [torch.rand(2, 3, 64, 64)]
    raw = lambda out: torch.cat([v.flatten() for v in out.values()]) if isinstance(out, dict) else out  # noqa: E731
    with torch.no_grad():
        ref = raw(model(calib[0]))
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    opts = PrologueOptions(cle=False, bias_correction=True, calib_batches=1)
    report = float_prologue(model, calib[0], calib, opts)
    assert report["bn_folded"] == n_bn and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(raw(model(calib[0])), ref, rtol=1e-3, atol=1e-3)  # folding keeps the FP function
    high = model.high_precision_layers()
    quantize_prologue(model, 4, calib, opts, high_precision=high)
    plain = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    assert plain == []
    bits = {n: layer.weight_quant.bits for n, layer in quant_layers(model)}
    assert {n for n, b in bits.items() if b == 8} == set(high)
    assert sum(b == 4 for b in bits.values()) > 20
    model.train()
    assert torch.isfinite(model(calib[0], targets()))


def test_letterbox_scale_and_flip_map_boxes_consistently(tiny):
    images, ann, splits = layout(tiny.root)
    ds = CocoDetectionSet(images / splits[0], ann / f"instances_{splits[0]}.json", imgsz=96)  # 64 px canvas → ×1.5
    img, target, (image_id, scale) = ds[(0, False)]
    flipped, ftarget, _ = ds[(0, True)]
    assert scale == 1.5 and img.shape == (3, 96, 96)
    coco = json.loads((ann / f"instances_{splits[0]}.json").read_text())
    first = [a["bbox"] for a in coco["annotations"] if a["image_id"] == image_id and a["bbox"][2] > 1 and a["bbox"][3] > 1]
    x, y, w, h = first[0]
    assert torch.allclose(target["boxes"][0], torch.tensor([x, y, x + w, y + h]) * 1.5)
    assert torch.equal(flipped, img.flip(-1))
    assert torch.allclose(ftarget["boxes"][:, 0], 96 - target["boxes"][:, 2])
    assert torch.equal(ftarget["labels"], target["labels"])


def test_batches_are_deterministic_and_shard_by_rank(tiny):
    images, ann, splits = layout(tiny.root)
    ds = CocoDetectionSet(images / splits[0], ann / f"instances_{splits[0]}.json", imgsz=64)
    a, b = DetectionBatches(ds, 4, 0, True, True), DetectionBatches(ds, 4, 0, True, True)
    ids = lambda batches, e: [i for _, _, info in batches.epoch(e) for i, _ in info]  # noqa: E731
    assert ids(a, 1) == ids(b, 1) and ids(a, 1) != ids(a, 2) and sorted(ids(a, 1)) == sorted(ids(a, 2))
    r0, r1 = DetectionBatches(ds, 4, 0, True, True, rank=0, world=2), DetectionBatches(ds, 4, 0, True, True, rank=1, world=2)
    assert sorted(ids(r0, 1) + ids(r1, 1)) == sorted(ids(a, 1)) and not set(ids(r0, 1)) & set(ids(r1, 1))


def test_yolox_fp_then_ours_runs_hooks_and_post_steps_and_logs_map(tiny, dirs):
    from qat.config import RunConfig
    from qat.detection.torch_train import TorchDetectionTrainer
    from qat.logging.run_reader import read_local_runs

    cfg = RunConfig(model="yolox_nano", recipe="scalegrad+ead+afw", bits=4, preset="smoke", table="t",
                               data=str(tiny.root), epochs=3, imgsz=64)
    result = TorchDetectionTrainer(cfg).run()
    assert list((dirs / "checkpoints" / "fp").glob("yolox_nano-det-smoke-*.pt"))  # FP trained first and cached
    for key in ("map", "map_trained", "fp_map", "init_map", "afw/weights", "freeze/fraction_frozen",
                "osc/fraction_oscillating"):
        assert key in result, key
    assert 0.0 <= result["map"] <= 100.0
    rec = {r.name: r for r in read_local_runs(cfg.run_dir)}["t/yolox_nano/scalegrad+ead+afw/w4a4/s0"]
    assert rec.finished and rec.metric("val/metric") and rec.summary["metric"] == rec.summary["map"]


def test_ssd_lsq_smoke_run_reports_map(tiny, dirs):
    from qat.config import RunConfig
    from qat.detection.torch_train import TorchDetectionTrainer

    cfg = RunConfig(model="ssd_mobilenetv2", recipe="lsq", bits=4, preset="smoke", table="t",
                               data=str(tiny.root), epochs=1, imgsz=64, wandb=False)
    result = TorchDetectionTrainer(cfg).run()
    assert result["recipe"] == "lsq" and 0.0 <= result["map"] <= 100.0 and "init_map" in result
    # the run trained the quantized detector: every conv of the architecture has a weight step in the final model
    state = torch.load(cfg.run_dir / "final.pt", weights_only=False)["model"]
    n_convs = sum(isinstance(m, nn.Conv2d) for m in build_torch_detector("ssd_mobilenetv2", 10, 64).modules())
    assert sum(k.endswith("weight_quant.step") for k in state) == n_convs


def test_paper_preset_runs_two_iterations_on_a_tiny_coco_format_set(tiny, dirs):
    from qat.cli import main

    fp = dirs / "fp.pt"
    torch.save({"model": build_torch_detector("yolox_nano", 10, 64).state_dict()}, fp)
    out = dirs / "paper_run"
    rc = main(["--model", "yolox_nano", "--recipe", "lsq", "--bits", "4", "--preset", "paper", "--data", str(tiny.root),
               "--fp-checkpoint", str(fp), "--imgsz", "64", "--batch-size", "4", "--max-iterations", "2",
               "--no-wandb", "--out", str(out)])
    assert rc == 0
    trained = torch.load(out / "trained.pt", weights_only=False)
    assert trained["iteration"] == 2 and not (out / "checkpoint.pt").exists()
    assert json.loads((out / "result.json").read_text())["model"] == "yolox_nano"


def test_paper_preset_without_data_is_one_clear_error(dirs, capsys):
    from qat.cli import main
    rc = main(["--model", "ssd_mobilenetv2", "--recipe", "lsq", "--preset", "paper", "--no-wandb"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "COCO root" in err and len(err.strip().splitlines()) == 1
