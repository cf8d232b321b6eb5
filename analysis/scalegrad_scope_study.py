#!/usr/bin/env python
"""Where ScaleGrad's gradients act (`scalegrad_layers`, DEVIATIONS 2a), chosen on the CALIBRATION split.

SPEC §2 applies PulseSmooth and exp(-kΔ) to every quantized layer; the paper does not say whether its 8-bit first /
last layers are included. Two arms of finished ScaleGrad runs, paired by (model, bits, seed): "all" (SPEC §2) and
"low-bit" (`--scalegrad-layers low-bit`). Each run's final model is evaluated on FMNIST-Det's calib split
(analysis/detector_split_eval.py; never on val, which the tables report); LSQ runs of the same cells are shown for
reference. The choice, computed here: the arm with the higher mean paired calibration mAP over every pair (ties:
SPEC's "all"), with its 95 % interval and the per-bits means beside it.

    python analysis/scalegrad_scope_study.py --all runs/proxy/table5_every_layer/yolov8n/scalegrad/w*/s* \
        --low-bit runs/proxy/scope_study/yolov8n/scalegrad/w*/s* --lsq runs/proxy/table5_unbounded/yolov8n/lsq/w*/s* \
        --out docs/scalegrad_scope_study.md

Each run's calibration mAP is kept in `<out>.json` as it is measured: a killed study resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis.calib_scores import calib_scores, write_report  # noqa: E402
from tables.paired import paired_difference, paired_differences_by  # noqa: E402

ARMS = ("all", "low-bit")


def cell(run_dir: Path) -> tuple[str, int, int]:
    c = json.loads((run_dir / "config.json").read_text())
    return c["model"], int(c["bits"]), int(c["seed"])


def measure(runs: list[Path], cache_path: Path) -> dict[tuple, float]:
    return {cell(r): m for r, m in calib_scores(runs, cache_path).items()}


def choose(by_arm: dict[str, dict]) -> tuple[str, object]:
    diff = paired_difference(by_arm["all"], by_arm["low-bit"])
    if diff is None:
        raise SystemExit("error: the two arms share no (model, bits, seed) cell")
    return ("low-bit" if diff.mean > 0 else "all"), diff


def report(by_arm: dict[str, dict], lsq: dict, val: dict[str, dict]) -> str:
    choice, diff = choose(by_arm)
    cells = sorted(set(by_arm["all"]) & set(by_arm["low-bit"]))
    lines = ["| model | bits | seed | LSQ calib mAP | ScaleGrad, all layers | ScaleGrad, low-bit layers | low-bit − all "
             "| (val mAP: all / low-bit) |", "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        a, b = by_arm["all"][c], by_arm["low-bit"][c]
        ref = f"{lsq[c]:.2f}" if c in lsq else "–"
        lines.append(f"| {c[0]} | W{c[1]}A{c[1]} | {c[2]} | {ref} | {a:.2f} | {b:.2f} | {b - a:+.2f} "
                     f"| {val['all'].get(c, float('nan')):.2f} / {val['low-bit'].get(c, float('nan')):.2f} |")
    lines += ["", f"Paired difference low-bit − all on the calib split, every pair: **{diff.describe()}**."]
    by_group = paired_differences_by(by_arm["all"], by_arm["low-bit"], group=1)  # per bit width
    lines += [f"W{bits}A{bits}: {d.describe()}." for bits, d in by_group.items()]
    lines += ["", f"Choice (higher mean calibration mAP; ties: SPEC's \"all\"): **scalegrad_layers = {choice}**."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--all", nargs="+", type=Path, required=True, help="ScaleGrad runs on every quantized layer")
    p.add_argument("--low-bit", nargs="+", type=Path, required=True, help="ScaleGrad runs on the low-bit layers")
    p.add_argument("--lsq", nargs="*", type=Path, default=[], help="LSQ runs of the same cells (reference)")
    p.add_argument("--out", type=Path, required=True, help="markdown report (its measurements: <out>.json)")
    a = p.parse_args(argv)
    cache_path = a.out.with_suffix(".json")
    by_arm = {"all": measure(a.all, cache_path), "low-bit": measure(a.low_bit, cache_path)}
    lsq = measure(a.lsq, cache_path)
    val = {arm: {cell(r): json.loads((r / "result.json").read_text())["map"] for r in runs}
           for arm, runs in (("all", a.all), ("low-bit", a.low_bit))}
    return write_report(a.out, report(by_arm, lsq, val))


if __name__ == "__main__":
    sys.exit(main())
