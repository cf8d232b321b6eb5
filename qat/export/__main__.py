"""`python -m qat.export RUN_DIR [--out DIR]`: deploy files of a finished classifier QAT run.

Writes into DIR (default RUN_DIR/export): model.onnx (QDQ, integer weights), model.packed.pt (bit-packed codes;
`qat.export.packed.load_packed_model` rebuilds the fake-quant model from it), export_report.json and
export_report.md (sizes and the ONNX Runtime check). Exits 1 when ONNX Runtime disagrees with the PyTorch model
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

from ..models import model_names
from ..train.checkpoint import CheckpointError
from . import check, onnx_qdq, packed, report
from .run_model import ExportError, load_run


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m qat.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished classifier QAT run directory (holds final.pt, result.json)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default RUN_DIR/export)")
    p.add_argument("--test-batches", type=int, default=None,
                   help="check on the first N test batches only (default: the run's whole test set)")
    args = p.parse_args(argv)
    if args.test_batches is not None and args.test_batches < 1:
        p.exit(2, f"error: --test-batches must be a positive integer, got {args.test_batches}\n")
    return args


def refuse_other_runs(run_dir: Path) -> None:
    """One error line for a directory this exporter does not handle, before anything is built."""
    config = run_dir / "config.json"
    if not config.is_file():
        raise ExportError(f"{run_dir} is not a run directory (no config.json)")
    model = json.loads(config.read_text()).get("model")
    if model not in model_names():
        raise ExportError(f"{run_dir} is a run of {model!r}, not a registry classifier; ONNX export supports the "
                          f"classifiers ({', '.join(model_names())}). Ultralytics detectors (YOLOv8/YOLOv9) are "
                          f"not supported yet: their QAT checkpoints (weights/qat_*.pt) are rebuilt by the "
                          f"detection trainer, which this exporter does not drive")


def export_run(run_dir: Path, out: Path, test_batches: int | None = None) -> dict:
    refuse_other_runs(run_dir)
    t0 = time.time()
    run = load_run(run_dir)
    batches = list(run.trainer.test_data.epoch(0))
    if test_batches is not None:
        batches = batches[:test_batches]
    example = batches[0][0][:1]
    out.mkdir(parents=True, exist_ok=True)
    meta = {"run_dir": str(run_dir), "model": run.cfg.model, "recipe": run.cfg.recipe, "bits": run.cfg.bits}
    onnx_path = onnx_qdq.export_onnx(run.model, example, out / "model.onnx", {"qat.run": meta})
    config = json.loads((run_dir / "config.json").read_text())
    packed_path = packed.save_packed(run.model, config, out / "model.packed.pt")
    packed_model, _ = packed.load_packed_model(packed_path)
    result = {**meta, "recorded_top1": run.result.get("top1"),
              "check": check.compare_outputs(run.model, onnx_path, batches, packed_model),
              "sizes": report.size_report(run.model, packed.read_packed(packed_path), packed_path, onnx_path),
              "files": {"onnx": str(onnx_path), "packed": str(packed_path)},
              "versions": {"torch": torch.__version__, "onnx": onnx_qdq.onnx.__version__,
                           "onnxruntime": check.ort.__version__},
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "seconds": round(time.time() - t0, 1)}
    (out / "export_report.json").write_text(json.dumps(result, indent=1))
    (out / "export_report.md").write_text(report.markdown(result, f"{run.cfg.model} {run.cfg.recipe} "
                                                                  f"W{run.cfg.bits}A{run.cfg.bits} ({run_dir})"))
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
        print(f"error: ONNX Runtime disagrees with the PyTorch model beyond the tolerances (top-1 "
              f"{c['onnx_top1']:.2f} vs {c['torch_top1']:.2f}, relative logit difference "
              f"{c['relative_logit_difference']:.3g}); see {out / 'export_report.json'}", file=sys.stderr)
        return 1
    if not c["packed_identical"]:
        print(f"error: the packed checkpoint does not rebuild identical outputs; see {out / 'export_report.json'}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
