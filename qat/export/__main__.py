"""`python -m qat.export RUN_DIR [--out DIR]`: deploy files of a finished QAT run (classifier or Ultralytics detector).

Writes into DIR (default RUN_DIR/export): model.onnx (QDQ, integer weights; a detector's graph ends at its raw head
outputs), model.packed.pt (bit-packed codes; `qat.export.packed.load_packed_model` rebuilds the fake-quant model
from it), export_report.json and export_report.md (sizes and the ONNX Runtime check: a classifier on its run's
test set, a detector on the first 16 val images of its FMNIST-Det set). Exits 1 when ONNX Runtime disagrees with the PyTorch model
beyond the stated tolerances or the packed checkpoint does not round-trip; 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ..detection.ultralytics_qat import DETECTORS
from ..models import model_names
from ..train.checkpoint import CheckpointError
from . import check, detector, onnx_qdq, packed, report
from .run_model import ExportError, load_run


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m qat.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished QAT run directory (holds result.json)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/export)")
    p.add_argument("--test-batches", type=int, default=None,
                   help="check on the first N test batches only (default: the run's whole test set)")
    args = p.parse_args(argv)
    if args.test_batches is not None and args.test_batches < 1:
        p.exit(2, f"error: --test-batches must be a positive integer, got {args.test_batches}\n")
    return args


def recorded_config(run_dir: Path) -> dict:
    """The run's config.json, or one error line for a directory this exporter does not handle."""
    config = run_dir / "config.json"
    if not config.is_file():
        raise ExportError(f"{run_dir} is not a run directory (no config.json)")
    recorded = json.loads(config.read_text())
    model = recorded.get("model")
    if model not in model_names() and model not in DETECTORS:
        raise ExportError(f"{run_dir} is a run of {model!r}; the exporter handles the registry classifiers "
                          f"({', '.join(model_names())}) and the Ultralytics detectors ({', '.join(DETECTORS)})")
    if recorded.get("recipe") == "fp":
        raise ExportError(f"{run_dir} is an FP run: only QAT runs have integer weights to export")
    return recorded


def _versions() -> dict:
    return {"torch": torch.__version__, "onnx": onnx_qdq.onnx.__version__, "onnxruntime": check.ort.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"}


def export_classifier(run_dir: Path, recorded: dict, out: Path, test_batches: int | None) -> dict:
    run = load_run(run_dir)
    batches = list(run.trainer.test_data.epoch(0))
    if test_batches is not None:
        batches = batches[:test_batches]
    meta = {"run_dir": str(run_dir), "model": run.cfg.model, "recipe": run.cfg.recipe, "bits": run.cfg.bits}
    onnx_path = onnx_qdq.export_onnx(run.model, batches[0][0][:1], out / "model.onnx", {"qat.run": meta})
    packed_path = packed.save_packed(run.model, {"kind": "classifier", "config": recorded}, out / "model.packed.pt")
    return {**meta, "recorded_top1": run.result.get("top1"),
            "check": check.compare_outputs(run.model, onnx_path, batches, packed.load_packed_model(packed_path)),
            "sizes": report.size_report(run.model, packed.read_packed(packed_path), packed_path, onnx_path)}


def export_detector(run_dir: Path, recorded: dict, out: Path) -> dict:
    model, spec, result, images = detector.load_detector_run(run_dir, recorded)
    meta = {"run_dir": str(run_dir), "model": spec["detector"], "recipe": spec["recipe"], "bits": spec["bits"]}
    onnx_path = onnx_qdq.export_onnx(model, images[:1], out / "model.onnx", {"qat.run": meta},
                                     output_names=detector.OUTPUT_NAMES)
    packed_path = packed.save_packed(model.detector, {"kind": "detector", **spec}, out / "model.packed.pt")
    rebuilt = detector.RawHeadOutputs(packed.load_packed_model(packed_path))
    return {**meta, "recorded_map": result.get("map"),
            "check": check.compare_raw_outputs(model, onnx_path, images, detector.OUTPUT_NAMES, rebuilt),
            "sizes": report.size_report(model.detector, packed.read_packed(packed_path), packed_path, onnx_path)}


def export_run(run_dir: Path, out: Path, test_batches: int | None = None) -> dict:
    recorded = recorded_config(run_dir)
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    if recorded["model"] in DETECTORS:
        result = export_detector(run_dir, recorded, out)
    else:
        result = export_classifier(run_dir, recorded, out, test_batches)
    result.update({"files": {"onnx": str(out / "model.onnx"), "packed": str(out / "model.packed.pt")},
                   "versions": _versions(), "seconds": round(time.time() - t0, 1)})
    (out / "export_report.json").write_text(json.dumps(result, indent=1))
    (out / "export_report.md").write_text(report.markdown(result, f"{result['model']} {result['recipe']} "
                                                                  f"W{result['bits']}A{result['bits']} ({run_dir})"))
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out or args.run_dir / "export"
    try:
        result = export_run(args.run_dir, out, args.test_batches)
    except (ExportError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((out / "export_report.md").read_text())
    c = result["check"]
    if not c["onnx_within_tolerance"]:
        print(f"error: ONNX Runtime disagrees with the PyTorch model beyond the tolerances; see "
              f"{out / 'export_report.json'}", file=sys.stderr)
        return 1
    if not c["packed_identical"]:
        print(f"error: the packed checkpoint does not rebuild identical outputs; see {out / 'export_report.json'}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
