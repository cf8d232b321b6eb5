#!/usr/bin/env python
"""FP pretraining of a proxy detector on FMNIST-Det, cached for every QAT run of that detector and preset.

    python scripts/train_fp_detector.py --model yolov8n --preset proxy
    python scripts/train_fp_detector.py --model yolov8n --preset proxy --epochs 20 --table fp_study

Same as `python -m qat.detection --recipe fp --table fp ...`: the FP32 weights (EMA, as Ultralytics
evaluates them) go to checkpoints/fp/{model}-det-{preset}-{data digest}.pt, which QAT runs of the same
preset load; the run itself is under runs/{preset}/fp/{model}/fp/s0. A finished run is not run again. A study
with other budgets (--epochs, --lr, another --table or seed) keeps its weights in its run directory (fp.pt), for
`python -m qat.detection ... --fp-checkpoint runs/{preset}/fp_study/{model}/fp/s0/fp.pt`.
"""
from __future__ import annotations

import sys

from qat.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--recipe" in argv:
        sys.stderr.write("error: this script only trains FP detectors (use python -m qat.detection for QAT)\n")
        sys.exit(2)
    if "--table" not in argv:
        argv += ["--table", "fp"]
    sys.exit(main(["--recipe", "fp"] + argv, prog="scripts/train_fp_detector.py", default_model="yolov8n"))
