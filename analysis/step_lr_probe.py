#!/usr/bin/env python
"""Probe of docs/PROXY_STUDY.md "What traps the step": an Ultralytics QAT run whose step sizes learn at
`--step-lr-scale` × the run's lr (the weights and biases keep it), to test whether the paper's lr 1e-3 for the step
sizes keeps the detector proxy's 8-bit Detect-head steps out of the trap. A diagnostic for this process only (it
wraps `QATDetectionTrainer.build_optimizer`), not a preset: give it a table of its own.

    python analysis/step_lr_probe.py --step-lr-scale 0.1 -- --model yolov8n --recipe damp --bits 4 --seed 0 \
        --table step_lr_probe
"""
from __future__ import annotations

import argparse
import sys


def scaled_step_group(build_optimizer, scale: float):
    """`build_optimizer` whose param group "step" gets lr × `scale` (Ultralytics' LambdaLR keeps the ratio)."""
    def build(self, *args, **kwargs):
        optimizer = build_optimizer(self, *args, **kwargs)
        for group in optimizer.param_groups:
            if group.get("param_group") == "step":
                group["lr"] *= scale
        return optimizer
    return build


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--step-lr-scale", type=float, required=True)
    p.add_argument("run_args", nargs=argparse.REMAINDER, help="after --: the arguments of python -m qat.run")
    a = p.parse_args(argv)
    if not a.step_lr_scale > 0:
        p.error("--step-lr-scale must be positive")
    from qat.cli import main as run_main
    from qat.detection.ultralytics_qat import QATDetectionTrainer
    QATDetectionTrainer.build_optimizer = scaled_step_group(QATDetectionTrainer.build_optimizer, a.step_lr_scale)
    run_args = a.run_args[1:] if a.run_args[:1] == ["--"] else a.run_args
    return run_main(run_args)


if __name__ == "__main__":
    sys.exit(main())
