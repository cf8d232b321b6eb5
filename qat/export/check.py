"""The exported files against the PyTorch fake-quant model, on the run's test set.

ONNX Runtime (CPU, default graph optimisations, as a deployment would run it) must give the same top-1 within
TOP1_TOLERANCE points and logits within LOGIT_TOLERANCE of the largest logit magnitude: the two compute the same
integer grid but accumulate convolutions in different orders, so an activation lying within float rounding of a
code boundary may land on the next code, which moves the logits by about one activation step. The packed
checkpoint must rebuild a model whose outputs are identical (torch.equal).
"""
from __future__ import annotations

import onnxruntime as ort
import torch
from torch import nn

TOP1_TOLERANCE = 0.1      # points of top-1
LOGIT_TOLERANCE = 0.05    # max |logit difference| / max |logit|


def onnx_session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare_outputs(model: nn.Module, onnx_path, batches, packed_model: nn.Module | None = None) -> dict:
    """Top-1 of both, logit differences, argmax disagreements; and whether the packed model is identical."""
    session = onnx_session(onnx_path)
    model.eval()
    images = correct_torch = correct_onnx = disagree = 0
    max_diff = max_logit = 0.0
    identical = True
    for x, y in batches:
        ref = model(x)
        out = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        if packed_model is not None:
            identical &= torch.equal(packed_model(x), ref)
        images += len(y)
        correct_torch += int((ref.argmax(1) == y).sum())
        correct_onnx += int((out.argmax(1) == y).sum())
        disagree += int((ref.argmax(1) != out.argmax(1)).sum())
        max_diff = max(max_diff, float((out - ref).abs().max()))
        max_logit = max(max_logit, float(ref.abs().max()))
    torch_top1, onnx_top1 = 100.0 * correct_torch / images, 100.0 * correct_onnx / images
    result = {"images": images, "torch_top1": torch_top1, "onnx_top1": onnx_top1,
              "top1_difference": onnx_top1 - torch_top1, "argmax_disagreements": disagree,
              "max_abs_logit_difference": max_diff, "max_abs_logit": max_logit,
              "relative_logit_difference": max_diff / max(max_logit, 1e-30),
              "top1_tolerance": TOP1_TOLERANCE, "logit_tolerance": LOGIT_TOLERANCE}
    result["onnx_within_tolerance"] = bool(abs(result["top1_difference"]) <= TOP1_TOLERANCE
                                           and result["relative_logit_difference"] <= LOGIT_TOLERANCE)
    if packed_model is not None:
        result["packed_identical"] = bool(identical)
    return result


@torch.no_grad()
def compare_raw_outputs(model: nn.Module, onnx_path, images: torch.Tensor, output_names, packed_model=None) -> dict:
    """A detector's raw head outputs: per output, max |difference| relative to max |output| (tolerance
    LOGIT_TOLERANCE); and whether the packed model's outputs are identical."""
    session = onnx_session(onnx_path)
    model.eval()
    refs = model(images)
    outs = session.run(None, {"input": images.numpy()})
    result = {"images": len(images), "logit_tolerance": LOGIT_TOLERANCE, "outputs": {}}
    for name, ref, out in zip(output_names, refs, outs):
        diff = float((torch.from_numpy(out) - ref).abs().max())
        scale = float(ref.abs().max())
        result["outputs"][name] = {"max_abs_difference": diff, "max_abs_output": scale,
                                   "relative_difference": diff / max(scale, 1e-30)}
    result["relative_logit_difference"] = max(o["relative_difference"] for o in result["outputs"].values())
    result["onnx_within_tolerance"] = bool(result["relative_logit_difference"] <= LOGIT_TOLERANCE)
    if packed_model is not None:
        result["packed_identical"] = all(torch.equal(a, b) for a, b in zip(packed_model(images), refs))
    return result
