"""Ultralytics detectors (YOLOv8 / YOLOv9): their raw head outputs as the exported graph's outputs.

The Detect head's post-processing (anchors, DFL decoding, NMS) stays in PyTorch / the deployment's own code;
the graph ends at what the head computes from the quantized layers: per anchor, the 4·reg_max box
distribution logits ("boxes") and the class logits ("scores"), as the head returns them in training mode.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..detection.ultralytics_qat import detect_head
from ..run.lifecycle import FINAL, TRAINED
from ..train import checkpoint as ckpt
from .run_model import ExportError, attach_frozen_codes_from

OUTPUT_NAMES = ("boxes", "scores")


class RawHeadOutputs(nn.Module):
    """`detector(x)` → (boxes [B, 4·reg_max, anchors], scores [B, classes, anchors])."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor):
        head = detect_head(self.detector)
        was_training = head.training
        head.training = True  # the head alone: raw outputs, no decoding
        try:
            out = self.detector(x)
        finally:
            head.training = was_training
        if not isinstance(out, dict) or not all(k in out for k in OUTPUT_NAMES):
            raise ExportError(f"layer {type(head).__name__} (the detector's head): expected raw outputs "
                              f"{OUTPUT_NAMES} in training mode, got {type(out).__name__}")
        return tuple(out[k] for k in OUTPUT_NAMES)


def detector_structure(name: str, nc: int, channels: int, imgsz: int, bits: int, recipe: str, prologue: dict):
    """The quantized detector's module tree, built as a QAT detection run builds it before loading a checkpoint."""
    from ..detection.ultralytics_qat import build_detector, dfl_convs, high_precision_layers
    from ..prepare.pipeline import PrologueOptions, build_structure
    from ..recipes import get_recipe
    model = build_detector(name, nc=nc, channels=channels)
    build_structure(model, bits, torch.zeros(1, channels, imgsz, imgsz), PrologueOptions(**prologue),
                    per_channel=get_recipe(recipe).per_channel, exclude=dfl_convs(model),
                    high_precision=high_precision_layers(model))
    return model


def load_detector_run(run_dir, recorded: dict):
    """(raw-output model, build spec, result, check images) of a finished Ultralytics QAT detection run.

    The spec (detector, classes, channels, image size, bits, recipe, prologue) is what the packed checkpoint's
    loader needs; classes and channels are read off the trained weights. The check images are the first val
    images of the run's data (its data yaml's, else its FMNIST-Det set's) resized to the run's image size
    (Ultralytics letterboxes these square canvases to the same square), RGB in [0, 1].
    """
    run_dir = Path(run_dir)
    c, preset = recorded, recorded.get("preset_values", {})
    final, trained = run_dir / FINAL, run_dir / TRAINED
    for path in (final, run_dir / "result.json"):
        if not path.is_file():
            raise ExportError(f"{run_dir} has no {path.relative_to(run_dir)}: not a finished QAT detection run")
    stored = ckpt.load(final)
    state, run = stored["model"], stored["config"]
    prefix = f"model.{max(int(k.split('.')[1]) for k in state if k.startswith('model.'))}"  # the Detect head
    spec = {"detector": c["model"], "nc": int(state[_last_cls_conv(state, prefix)].shape[0]),
            "channels": int(next(v for k, v in state.items() if k.endswith(".weight") and v.dim() == 4).shape[1]),
            "imgsz": int(c.get("imgsz") or preset["imgsz"]), "bits": int(run["bits"]), "recipe": run["recipe"],
            "prologue": stored["prologue"]}
    model = detector_structure(spec["detector"], spec["nc"], spec["channels"], spec["imgsz"], spec["bits"],
                               spec["recipe"], spec["prologue"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ExportError(f"{final} does not fit {spec['detector']} as recorded: {str(e)[:300]}") from None
    attach_frozen_codes_from(model, trained, spec["recipe"])
    return RawHeadOutputs(model).eval(), spec, json.loads((run_dir / "result.json").read_text()), \
        check_images(val_images_dir(c, preset), spec["imgsz"], spec["channels"])


def _last_cls_conv(state: dict, prefix: str) -> str:
    """The class branch's output conv of the first level: its output channels are the classes."""
    keys = [k for k in state if k.startswith(f"{prefix}.cv3.0.") and k.endswith(".weight") and state[k].dim() == 4]
    return max(keys, key=lambda k: [int(p) if p.isdigit() else -1 for p in k.split(".")])


def val_images_dir(c: dict, preset: dict):
    """The run's val images: its data yaml's `val` folder, else its preset's FMNIST-Det set."""
    if c.get("data"):
        import yaml
        spec = yaml.safe_load(Path(c["data"]).read_text()) or {}
        folder = Path(spec.get("path", "")) / str(spec.get("val", ""))
        if not folder.is_dir():
            raise ExportError(f"the val images of {c['data']} are not a folder ({folder}); export the model with "
                              f"qat.export.onnx_qdq.export_onnx and check it on your own images")
        return folder
    if not preset.get("fmnist_det"):
        raise ExportError("the run records neither a data yaml nor an FMNIST-Det set to check the export on")
    from ..data.fmnist_det import build_fmnist_det
    return build_fmnist_det(preset["fmnist_det"]).images("val")


def check_images(folder, imgsz: int, channels: int, count: int = 16) -> torch.Tensor:
    import numpy as np
    from PIL import Image
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))[:count]
    if not files:
        raise ExportError(f"no val images in {folder} to check the export on")
    batch = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
                         for f in files])[:, :channels]
    return torch.nn.functional.interpolate(batch, size=(imgsz, imgsz), mode="bilinear", align_corners=False)
