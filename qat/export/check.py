"""The exported files against the PyTorch fake-quant model, on the run's test set.

ONNX Runtime (CPU, its default graph optimisations but one) must give the same top-1 within TOP1_TOLERANCE points
and a mean |logit difference| within LOGIT_TOLERANCE of the largest |logit| (the max difference is reported too).
The two compute the same integer grids but accumulate convolutions in different orders, so an activation within
float rounding of a code boundary can land on the next code; at 3-4 bits such a flip moves the next layers by
whole steps, so single logits can differ by much more than the mean. The optimisation left out,
WeightBiasQuantization, rounds every float bias after a DequantizeLinear to int32 at s_x·s_w, as integer
kernels need; the fake-quant model keeps float biases, and on a trained proxy MobileNetV2 at W4A4 that rounding
alone turned 90 of 512 predictions (measured). The packed checkpoint must rebuild identical outputs (torch.equal).
"""
from __future__ import annotations

import onnxruntime as ort
import torch
from torch import nn

TOP1_TOLERANCE = 0.1      # points of top-1
LOGIT_TOLERANCE = 0.01    # mean |logit difference| / max |logit|
DISABLED_OPTIMIZERS = ["WeightBiasQuantization"]


def onnx_session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=DISABLED_OPTIMIZERS)


@torch.no_grad()
def compare_outputs(model: nn.Module, onnx_path, batches, packed_model: nn.Module | None = None) -> dict:
    """Top-1 of both, logit differences, argmax disagreements; and whether the packed model is identical."""
    session = onnx_session(onnx_path)
    model.eval()
    images = correct_torch = correct_onnx = disagree = 0
    max_diff = max_logit = diff_sum = 0.0
    values = 0
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
        diff_sum, values = diff_sum + float((out - ref).abs().sum()), values + out.numel()
        max_logit = max(max_logit, float(ref.abs().max()))
    torch_top1, onnx_top1 = 100.0 * correct_torch / images, 100.0 * correct_onnx / images
    result = {"images": images, "torch_top1": torch_top1, "onnx_top1": onnx_top1,
              "top1_difference": onnx_top1 - torch_top1, "argmax_disagreements": disagree,
              "max_abs_logit_difference": max_diff, "mean_abs_logit_difference": diff_sum / values,
              "max_abs_logit": max_logit, "relative_logit_difference": diff_sum / values / max(max_logit, 1e-30),
              "top1_tolerance": TOP1_TOLERANCE, "logit_tolerance": LOGIT_TOLERANCE,
              "ort_disabled_optimizers": DISABLED_OPTIMIZERS}
    result["onnx_within_tolerance"] = bool(abs(result["top1_difference"]) <= TOP1_TOLERANCE
                                           and result["relative_logit_difference"] <= LOGIT_TOLERANCE)
    if packed_model is not None:
        result["packed_identical"] = bool(identical)
    return result


@torch.no_grad()
def compare_raw_outputs(model: nn.Module, onnx_path, images: torch.Tensor, output_names, packed_model=None) -> dict:
    """A detector's raw head outputs: per output, mean |difference| relative to max |output| (tolerance
    LOGIT_TOLERANCE; the max is reported too); and whether the packed model's outputs are identical."""
    session = onnx_session(onnx_path)
    model.eval()
    refs = model(images)
    outs = session.run(None, {"input": images.numpy()})
    result = {"images": len(images), "logit_tolerance": LOGIT_TOLERANCE, "outputs": {},
              "ort_disabled_optimizers": DISABLED_OPTIMIZERS}
    for name, ref, out in zip(output_names, refs, outs):
        diff = (torch.from_numpy(out) - ref).abs()
        scale = float(ref.abs().max())
        result["outputs"][name] = {"max_abs_difference": float(diff.max()), "mean_abs_difference": float(diff.mean()),
                                   "max_abs_output": scale, "relative_difference": float(diff.mean()) / max(scale, 1e-30)}
    result["relative_logit_difference"] = max(o["relative_difference"] for o in result["outputs"].values())
    result["onnx_within_tolerance"] = bool(result["relative_logit_difference"] <= LOGIT_TOLERANCE)
    if packed_model is not None:
        result["packed_identical"] = all(torch.equal(a, b) for a, b in zip(packed_model(images), refs))
    return result
