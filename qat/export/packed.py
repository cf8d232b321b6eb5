"""Bit-packed integer checkpoint of a fake-quant model, and its loader.

File (torch.save of a dict, FORMAT below):
  "build":   what the loader rebuilds the module tree from, as a resume does: {"kind": "classifier", "config": the
             run's recorded configuration} or {"kind": "detector", detector, nc, channels, imgsz, bits, recipe,
             prologue} (qat.export.detector.detector_structure)
  "codes":   per quantized layer {"packed": uint8 tensor, "bits", "qmin", "shape"}: the effective codes (frozen
             ones included) minus qmin, b bits each, most significant bit first, bit-packed (numpy packbits)
  "float":   every other entry of the state dict: biases, step sizes, layers left in float, quantizers' bits
The loader's state dict has latent weights s·code: the fake-quant forward rounds them back to exactly `code`
(|s·code/s − code| is a few ulp of a number ≤ 128), so the rebuilt model computes what the exported one did.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..modules import quant_layers
from ..train import checkpoint as ckpt
from .run_model import ExportError, effective_codes

FORMAT = "qat-packed-codes/1"


def pack_bits(codes: np.ndarray, bits: int, qmin: int) -> np.ndarray:
    """Integers in [qmin, qmin + 2^bits − 1] → uint8 array of ceil(n·bits/8) bytes."""
    offset = codes.reshape(-1).astype(np.int64) - qmin
    if offset.size and (offset.min() < 0 or offset.max() >= 2 ** bits):
        raise ValueError(f"pack_bits: codes outside [{qmin}, {qmin + 2 ** bits - 1}]")
    planes = (offset[:, None] >> np.arange(bits - 1, -1, -1)) & 1
    return np.packbits(planes.astype(np.uint8).reshape(-1))


def unpack_bits(packed: np.ndarray, bits: int, qmin: int, count: int) -> np.ndarray:
    planes = np.unpackbits(packed)[:count * bits].reshape(count, bits).astype(np.int64)
    return (planes << np.arange(bits - 1, -1, -1)).sum(1) + qmin


def packed_state(model: nn.Module, build: dict) -> dict:
    layers = dict(quant_layers(model))
    codes = {}
    for name, layer in layers.items():
        wq = layer.weight_quant
        c = effective_codes(layer).cpu().numpy()
        codes[name] = {"packed": torch.from_numpy(pack_bits(c, wq.bits, wq.qmin)), "bits": wq.bits, "qmin": wq.qmin,
                       "shape": list(c.shape)}
    weights = {f"{name}.weight" for name in layers}
    floats = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v)
              for k, v in model.state_dict().items() if k not in weights}
    return {"format": FORMAT, "build": build, "codes": codes, "float": floats}


def save_packed(model: nn.Module, build: dict, path: Path) -> Path:
    ckpt.save(packed_state(model, build), Path(path))
    return Path(path)


def read_packed(path: Path) -> dict:
    obj = ckpt.load(path)
    if obj.get("format") != FORMAT:
        raise ckpt.CheckpointError(f"{path} is not a packed checkpoint ({FORMAT}); its format: {obj.get('format')!r}")
    return obj


def unpacked_state_dict(packed: dict) -> dict:
    """The fake-quant model's state dict: the float parts plus latent weights s·code."""
    state = dict(packed["float"])
    for name, entry in packed["codes"].items():
        count = int(np.prod(entry["shape"]))
        codes = unpack_bits(entry["packed"].numpy(), entry["bits"], entry["qmin"], count).reshape(entry["shape"])
        step = state[f"{name}.weight_quant.step"]
        state[f"{name}.weight"] = step * torch.from_numpy(codes).to(step.dtype)
    return state


def load_packed_model(path: Path) -> nn.Module:
    """The fake-quant model (eval mode; a detector itself, not its raw-output wrapper) from a packed checkpoint."""
    packed = read_packed(path)
    build = dict(packed["build"])
    if build.pop("kind") == "detector":
        from .detector import detector_structure
        model = detector_structure(build["detector"], build["nc"], build["channels"], build["imgsz"], build["bits"],
                                   build["recipe"], build["prologue"])
    else:
        from .run_model import build_quantized_structure, run_config
        _, model = build_quantized_structure(run_config(build["config"]))
    try:
        model.load_state_dict(unpacked_state_dict(packed))
    except RuntimeError as e:
        raise ExportError(f"{path} does not fit its recorded configuration: {str(e)[:300]}") from None
    return model.eval()


def packed_code_bytes(packed: dict) -> int:
    return sum(entry["packed"].numel() for entry in packed["codes"].values())
