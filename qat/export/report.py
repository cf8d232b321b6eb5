"""Sizes of a deployment: FP32 weights, the packed integer checkpoint and the ONNX file, in bytes and as ratios.

"FP32 model" is every floating-point tensor of the model's state dict but the quantizers' step sizes, at 4 bytes
(what the same network stores without quantization); "FP32 quantized weights" only the weights that get codes,
the part that the codes replace (≈ b/32 of it for b-bit layers).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..modules import quant_layers


def size_report(model: nn.Module, packed: dict, packed_path: Path, onnx_path: Path) -> dict:
    by_bits: dict[int, dict] = {}
    for name, layer in quant_layers(model):
        b = layer.weight_quant.bits
        row = by_bits.setdefault(b, {"weights": 0, "fp32_bytes": 0, "packed_code_bytes": 0})
        n = layer.weight.numel()
        row["weights"] += n
        row["fp32_bytes"] += 4 * n
        row["packed_code_bytes"] += packed["codes"][name]["packed"].numel()
    state = model.state_dict()
    fp32_model = 4 * sum(v.numel() for k, v in state.items()
                         if hasattr(v, "is_floating_point") and v.is_floating_point() and not k.endswith(".step"))
    fp32_quantized = sum(r["fp32_bytes"] for r in by_bits.values())
    codes = sum(r["packed_code_bytes"] for r in by_bits.values())
    packed_file, onnx_file = Path(packed_path).stat().st_size, Path(onnx_path).stat().st_size
    return {
        "fp32_model_bytes": fp32_model, "fp32_quantized_weight_bytes": fp32_quantized,
        "packed_code_bytes": codes, "packed_file_bytes": packed_file, "onnx_file_bytes": onnx_file,
        "codes_vs_fp32_quantized_weights": codes / fp32_quantized,
        "packed_file_vs_fp32_model": packed_file / fp32_model, "onnx_file_vs_fp32_model": onnx_file / fp32_model,
        "by_bits": {str(b): {**r, "ratio": r["packed_code_bytes"] / r["fp32_bytes"],
                             "expected_ratio": b / 32} for b, r in sorted(by_bits.items())},
    }


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def markdown(report: dict, title: str) -> str:
    s, c = report["sizes"], report.get("check", {})
    lines = [f"# Export of {title}", "",
             "| what | bytes | size | vs FP32 |", "|---|---:|---:|---:|",
             f"| FP32 model (all float tensors) | {s['fp32_model_bytes']:,} | {_kib(s['fp32_model_bytes'])} | 1 |",
             f"| FP32 quantized weights | {s['fp32_quantized_weight_bytes']:,} | {_kib(s['fp32_quantized_weight_bytes'])} | "
             f"{s['fp32_quantized_weight_bytes'] / s['fp32_model_bytes']:.3f} |",
             f"| packed codes | {s['packed_code_bytes']:,} | {_kib(s['packed_code_bytes'])} | "
             f"{s['codes_vs_fp32_quantized_weights']:.4f} of the quantized weights |",
             f"| packed checkpoint file | {s['packed_file_bytes']:,} | {_kib(s['packed_file_bytes'])} | "
             f"{s['packed_file_vs_fp32_model']:.4f} ({100 * (1 - s['packed_file_vs_fp32_model']):.1f} % smaller) |",
             f"| ONNX file (QDQ) | {s['onnx_file_bytes']:,} | {_kib(s['onnx_file_bytes'])} | "
             f"{s['onnx_file_vs_fp32_model']:.4f} ({100 * (1 - s['onnx_file_vs_fp32_model']):.1f} % smaller) |", "",
             "| weight bits | weights | FP32 bytes | packed bytes | ratio | b/32 |", "|---:|---:|---:|---:|---:|---:|"]
    for b, r in s["by_bits"].items():
        lines.append(f"| {b} | {r['weights']:,} | {r['fp32_bytes']:,} | {r['packed_code_bytes']:,} | {r['ratio']:.4f} | "
                     f"{r['expected_ratio']:.4f} |")
    if c and "outputs" in c:
        diffs = ", ".join(f"{k} mean {v['mean_abs_difference']:.3g}, max {v['max_abs_difference']:.3g} of max |output| "
                          f"{v['max_abs_output']:.3g}" for k, v in c["outputs"].items())
        lines += ["", f"ONNX Runtime vs PyTorch, raw head outputs on {c['images']} images: |difference| {diffs} "
                  f"(mean relative {c['relative_logit_difference']:.3g}, tolerance {c['logit_tolerance']}); packed "
                  f"checkpoint round trip identical: {c.get('packed_identical')}."]
    elif c:
        lines += ["", f"ONNX Runtime vs PyTorch on {c['images']} test images: top-1 {c['onnx_top1']:.2f} % vs "
                  f"{c['torch_top1']:.2f} % (difference {c['top1_difference']:+.2f}, tolerance {c['top1_tolerance']}), "
                  f"{c['argmax_disagreements']} argmax disagreements, mean |logit difference| "
                  f"{c['mean_abs_logit_difference']:.3g} (max {c['max_abs_logit_difference']:.3g}; max |logit| "
                  f"{c['max_abs_logit']:.3g}; mean relative to it {c['relative_logit_difference']:.3g}, tolerance "
                  f"{c['logit_tolerance']}); packed checkpoint "
                  f"round trip identical: {c.get('packed_identical')}."]
    return "\n".join(lines) + "\n"

