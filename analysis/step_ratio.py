#!/usr/bin/env python
"""The layers whose final weight step size differs most between two finished QAT runs of the same model (docs/
PROXY_STUDY.md "ScaleGrad's detector losses": a trapped step is ~100× its LSQ value).

Reads each run's `final.pt` (the model's state dict) and prints, per pair, the largest ratio
step(run) / step(reference) over the layers with a per-tensor weight step, and its layer.

    python analysis/step_ratio.py runs/proxy/table5/yolov8n/scalegrad/w4a4/s1 runs/proxy/table5/yolov8n/lsq/w4a4/s1
    (any number of run / reference pairs)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qat.train import checkpoint

SUFFIX = ".weight_quant.step"


def weight_steps(run_dir: Path) -> dict[str, float]:
    """Layer name → its per-tensor weight step in the run's final model."""
    path = run_dir / "final.pt"
    if not path.is_file():
        raise SystemExit(f"error: {run_dir} has no final.pt: not a finished QAT run")
    state = checkpoint.load(path)["model"]  # (a QAT state dict holds non-tensor extra state too)
    return {k[:-len(SUFFIX)]: float(v) for k, v in state.items() if k.endswith(SUFFIX) and v.numel() == 1}


def largest_ratio(run_dir: Path, reference: Path) -> tuple[float, str]:
    a, b = weight_steps(run_dir), weight_steps(reference)
    shared = sorted(set(a) & set(b))
    if not shared:
        raise SystemExit(f"error: {run_dir} and {reference} share no per-tensor weight step")
    return max((a[k] / b[k], k) for k in shared)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run, reference[, run, reference ...]")
    a = p.parse_args(argv)
    if len(a.runs) % 2:
        p.error("give runs in pairs: run reference [run reference ...]")
    for run_dir, reference in zip(a.runs[::2], a.runs[1::2]):
        ratio, layer = largest_ratio(run_dir, reference)
        print(f"{run_dir}  vs {reference}: largest weight-step ratio {ratio:.2f} ({layer})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
