"""ONNX export in QDQ form: integer weights → DequantizeLinear; inputs → QuantizeLinear → DequantizeLinear.

How: during `torch.onnx.export` (the TorchScript exporter, `dynamo=False`) every quantizer's forward is replaced
by a marker, an autograd Function whose ONNX symbolic is one custom node `qat::Quantizer(x)` carrying the
quantizer's name. The exporter thus writes the float graph exactly as the model computes it (any architecture it
can trace), and a second pass with the onnx helper API replaces each marker by standard nodes:

- weight:     codes (INT4 for ≤ 4 bits, else INT8) → DequantizeLinear(scale s, zero point 0, axis 0)
              (per-tensor: scalar s; per-channel: s of shape [C]); the float weight initializer is dropped.
- activation: QuantizeLinear(s, 0) → DequantizeLinear(s, 0), the integer type (U)INT4 for ≤ 4 bits, else
              (U)INT8, signed as the quantizer's grid; QuantizeLinear saturates to the type's range, which is
              [qmin, qmax] at 4 and 8 bits. A narrower grid (3 bits in a 4-bit type) is clamped first to
              [s·qmin, s·qmax] by Max → Min, which is Clip(s·qmin, s·qmax): ONNX Runtime 1.32's ClipQuantFusion
              fails on a Clip before a 4-bit QuantizeLinear. ONNX rounds half to even, as torch.round does.

This is preferred over writing Q/DQ with torch ops (fake_quantize_* exports only 8-bit ranges, and TorchScript has
no 4-bit types) and over rebuilding the graph by hand (the exporter already knows every layer's wiring). The
TorchScript exporter stops at opset 20; the graph is converted to opset 21, the first with INT4/UINT4
QuantizeLinear/DequantizeLinear. Each quantizer's bits, grid and scale shape are also kept in the model's
metadata_props ("qat.quantizers", JSON) so a reader knows the range stays [qmin, qmax] in a wider type.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from ..functional import STEP_EPS
from ..modules import quant_layers, set_submodule
from ..quantizer import Quantizer
from .run_model import ExportError, effective_codes

OPSET = 21
EXPORT_OPSET = 20        # the TorchScript exporter's highest
MARKER_DOMAIN = "qat"
METADATA_KEY = "qat.quantizers"


class _Marker(torch.autograd.Function):
    """Identity in PyTorch (the tracer only needs shapes); one `qat::Quantizer` node in ONNX."""

    @staticmethod
    def forward(ctx, x, key):
        return x.clone()

    @staticmethod
    def symbolic(g, x, key):
        # the input's type and shape, which a following Conv needs to know its kernel
        return g.op(f"{MARKER_DOMAIN}::Quantizer", x, key_s=key).setType(x.type())


def _integer_type(bits: int, signed: bool):
    """(numpy dtype, bits of storage) of the narrowest ONNX integer type holding a b-bit grid."""
    if bits <= 4:
        return (ml_dtypes.int4 if signed else ml_dtypes.uint4), 4
    return (np.int8 if signed else np.uint8), 8


def _type_range(dtype) -> tuple[int, int]:
    info = ml_dtypes.iinfo(dtype)
    return int(info.min), int(info.max)


def quantizer_specs(model: nn.Module) -> dict[str, dict]:
    """Per quantizer (key 'layer.weight_quant' / 'layer.input_quant'): what the ONNX pass writes."""
    specs = {}
    for name, layer in quant_layers(model):
        for kind in ("weight_quant", "input_quant"):
            q: Quantizer = getattr(layer, kind)
            if not q.enabled or getattr(q, "observing", False):
                raise ExportError(f"layer {name}: its {kind} is disabled or still observing; only a trained "
                                  f"fake-quant model can be exported")
            step = q.step.detach().clamp_min(STEP_EPS).float().cpu()
            spec = {"layer": name, "kind": kind, "bits": q.bits, "signed": q.signed, "qmin": q.qmin, "qmax": q.qmax,
                    "step": step.reshape(-1) if q.per_channel else step.reshape(())}
            if kind == "weight_quant":
                spec["codes"] = effective_codes(layer).cpu()
            specs[f"{name}.{kind}"] = spec
    if not specs:
        raise ExportError("the model has no quantized layer to export")
    return specs


class _QuantizerMarker(nn.Module):
    """Stands in for a quantizer during the export: the marker, plus the attributes the layers read from it."""

    def __init__(self, key: str, quantizer: Quantizer):
        super().__init__()
        self.key, self.step, self.qmin, self.qmax = key, quantizer.step.detach(), quantizer.qmin, quantizer.qmax

    def forward(self, x):
        return _Marker.apply(x, self.key)


def with_markers(model: nn.Module, specs: dict) -> nn.Module:
    """A copy of `model` whose quantizers are markers. (A copy, not a patched forward: the quantizers' extra
    state, a dict, would also stop the tracer, which reads every module's state dict.)"""
    marked = copy.deepcopy(model)
    for key in specs:
        set_submodule(marked, key, _QuantizerMarker(key, marked.get_submodule(key)))
    return marked


def _torchscript_export(model: nn.Module, args: tuple, f, **kwargs) -> None:
    with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, f, dynamo=False, opset_version=EXPORT_OPSET,
                          custom_opsets={MARKER_DOMAIN: 1}, **kwargs)


def failing_layer(model: nn.Module, example: torch.Tensor) -> str | None:
    """The deepest module that fails to export on its own (its inputs recorded from one eager forward), or None.
    Run only after the whole model failed: it exports every module once."""
    inputs, order = {}, []

    def record(name):
        def hook(module, args):
            if name not in inputs:
                inputs[name] = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
                order.append(name)
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules()
               if n and not isinstance(m, _QuantizerMarker)]
    try:
        with torch.no_grad():
            model(example)
    except Exception:
        pass
    finally:
        for h in handles:
            h.remove()
    failing = []
    for name in order:
        try:
            _torchscript_export(model.get_submodule(name), inputs[name], io.BytesIO())
        except Exception:
            failing.append(name)
    return max(failing, key=lambda n: n.count(".")) if failing else None


def float_graph_with_markers(model: nn.Module, example: torch.Tensor, specs: dict,
                             output_names=("output",)) -> onnx.ModelProto:
    buffer = io.BytesIO()
    model = with_markers(model, specs)
    try:
        _torchscript_export(model, (example,), buffer, input_names=["input"], output_names=list(output_names),
                            dynamic_axes={n: {0: "batch"} for n in ("input", *output_names)},
                            do_constant_folding=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        name = failing_layer(model, example)
        where = f"layer {name} ({type(model.get_submodule(name)).__name__})" if name else "the model"
        raise ExportError(f"{where} cannot be exported to ONNX: {type(e).__name__}: {first[:300]}") from None
    return onnx.load_from_string(buffer.getvalue())


def _qdq_nodes(node: onnx.NodeProto, spec: dict, key: str) -> tuple[list, list]:
    """(nodes, initializers) replacing one marker node."""
    dtype, _ = _integer_type(spec["bits"], spec["signed"])
    step = spec["step"].numpy().astype(np.float32)
    scale = numpy_helper.from_array(step, f"{key}.scale")
    zero = numpy_helper.from_array(np.zeros(step.shape, dtype), f"{key}.zero_point")
    out = node.output[0]
    if spec["kind"] == "weight_quant":
        codes = spec["codes"].numpy().astype(np.int8).astype(dtype)
        init = numpy_helper.from_array(codes, f"{key}.codes")
        dq = helper.make_node("DequantizeLinear", [init.name, scale.name, zero.name], [out], name=f"{key}.dq",
                              axis=0)
        return [dq], [init, scale, zero]
    q = helper.make_node("QuantizeLinear", [node.input[0], scale.name, zero.name], [f"{key}.q"], name=f"{key}.q")
    dq = helper.make_node("DequantizeLinear", [f"{key}.q", scale.name, zero.name], [out], name=f"{key}.dq")
    if (spec["qmin"], spec["qmax"]) == _type_range(dtype):
        return [q, dq], [scale, zero]  # QuantizeLinear saturates to exactly [qmin, qmax]
    # A grid narrower than its type (3 bits in a 4-bit type): clamp to [s·qmin, s·qmax] first, as Max → Min
    # (a Clip before a 4-bit QuantizeLinear makes ONNX Runtime 1.32's ClipQuantFusion fail at session start).
    lo = numpy_helper.from_array(np.asarray(step * spec["qmin"], np.float32), f"{key}.clamp_min")
    hi = numpy_helper.from_array(np.asarray(step * spec["qmax"], np.float32), f"{key}.clamp_max")
    low = helper.make_node("Max", [node.input[0], lo.name], [f"{key}.above_min"], name=f"{key}.max")
    high = helper.make_node("Min", [f"{key}.above_min", hi.name], [f"{key}.clamped"], name=f"{key}.min")
    q.input[0] = f"{key}.clamped"
    return [low, high, q, dq], [lo, hi, scale, zero]


def insert_qdq(model_proto: onnx.ModelProto, specs: dict) -> onnx.ModelProto:
    """Replace every marker node by its Q/DQ nodes and drop the float weights they made unused."""
    graph = model_proto.graph
    nodes, added, seen = [], [], set()
    for node in graph.node:
        if node.domain != MARKER_DOMAIN:
            nodes.append(node)
            continue
        key = next(a.s.decode() for a in node.attribute if a.name == "key")
        new_nodes, inits = _qdq_nodes(node, specs[key], key)
        nodes.extend(new_nodes)
        added.extend(inits)
        seen.add(key)
    missing = sorted(set(specs) - seen)
    if missing:
        raise ExportError(f"layer {specs[missing[0]]['layer']}: its {specs[missing[0]]['kind']} is not on the "
                          f"traced path (the exported graph does not use it)")
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for opset in list(model_proto.opset_import):
        if opset.domain == MARKER_DOMAIN:
            model_proto.opset_import.remove(opset)
    _clips_before_4bit_quantize_as_max_min(graph, specs)
    return model_proto


def _clips_before_4bit_quantize_as_max_min(graph: onnx.GraphProto, specs: dict) -> None:
    """Rewrite a Clip that feeds a 4-bit QuantizeLinear (e.g. a ReLU6) as the equal Max → Min: ONNX Runtime
    1.32's ClipQuantFusion, which removes such a Clip at session start, fails on 4-bit zero points."""
    four_bit_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"
                       and _integer_type(specs[n.name[:-len(".q")]]["bits"], True)[1] == 4}
    nodes = []
    for node in graph.node:
        if node.op_type != "Clip" or node.output[0] not in four_bit_inputs:
            nodes.append(node)
            continue
        x, lo, hi = (list(node.input) + ["", ""])[:3]
        if lo:
            nodes.append(helper.make_node("Max", [x, lo], [f"{node.output[0]}.above_min"], name=f"{node.name}.max"))
            x = f"{node.output[0]}.above_min"
        nodes.append(helper.make_node("Min", [x, hi], [node.output[0]], name=f"{node.name}.min") if hi else
                     helper.make_node("Identity", [x], [node.output[0]], name=f"{node.name}.identity"))
    del graph.node[:]
    graph.node.extend(nodes)


def to_opset(model_proto: onnx.ModelProto) -> onnx.ModelProto:
    """Opset 20 → 21: besides Q/DQ, opset 21 changes operators only by admitting 4-bit types (GroupNormalization
    aside), so only the version number changes; onnx.checker then checks the graph at opset 21."""
    ops = {n.op_type for n in model_proto.graph.node}
    if "GroupNormalization" in ops:
        raise ExportError("GroupNormalization changed meaning in opset 21; this exporter does not convert it")
    for opset in model_proto.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = OPSET
    return model_proto


def metadata(specs: dict) -> dict:
    return {key: {k: (list(v.shape) if k == "step" else v) for k, v in spec.items() if k != "codes"}
            for key, spec in specs.items()}


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, extra_metadata: dict | None = None,
                output_names=("output",)) -> Path:
    """Write `model` (a fake-quant model, eval mode) as a QDQ ONNX file checked by onnx.checker."""
    model = model.eval()
    specs = quantizer_specs(model)
    proto = to_opset(insert_qdq(float_graph_with_markers(model, example, specs, output_names), specs))
    proto.doc_string = ("QDQ export of a qat fake-quant model: weights are integer codes of the quantizer's grid "
                        "[qmin, qmax] (bits in metadata_props 'qat.quantizers')")
    entries = {METADATA_KEY: json.dumps(metadata(specs))}
    entries.update({k: json.dumps(v) for k, v in (extra_metadata or {}).items()})
    for k, v in entries.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(proto, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, path)
    return path
