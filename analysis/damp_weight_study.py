#!/usr/bin/env python
"""Damp's loss weight λ_final (`--damp-weight`, SPEC §7) for a preset, chosen on the CALIBRATION split.

Nagel et al.'s λ_final = 0.1 was set for their regime (ImageNet, ~10⁵ iterations, BN not folded). On the proxy the
dampening gradient at 0.1 is ~0.87× the task gradient in depthwise layers but ~0.12× in the pointwise ones
(kernel_mean divides by C_in·k·k; analysis/damp_gradient_ratio.py), and the proxy's oscillation sits mostly in the
pointwise layers. This study trains Damp at several λ on the same cells and picks one without looking at the test
split. Runs are grouped by their recorded `methods.damp_weight` and paired by (model, bits, seed); LSQ runs of the
same cells (`--lsq`, λ = 0) are shown for the oscillation and accuracy they start from.

For each λ: mean calibration top-1 (or mAP), its paired difference against λ = 0.1 (the reference's) with a 95 %
interval, the test metric beside (not used), and the late oscillation (`osc/late_fraction`, depthwise and the rest
apart: the share of low-bit weights above the freeze threshold in the last 20 % of training). The choice, computed
here: the λ with the highest mean paired calibration difference against 0.1 when that mean is above 0, else 0.1.

    python analysis/damp_weight_study.py runs/proxy/table2/mobilenetv2/damp/w3a3/s{0,1,2} \
        runs/proxy/damp_l{1,10,100}/mobilenetv2/damp/w3a3/s{0,1,2} \
        --lsq runs/proxy/table5/mobilenetv2/lsq/w3a3/s{0,1,2} --out docs/damp_weight_study.md

Each run's calibration score is kept in `<out>.json` as it is measured: a killed study resumes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis.calib_scores import calib_scores, write_report  # noqa: E402
from tables.paired import paired_difference  # noqa: E402

REFERENCE = 0.1  # Nagel et al.'s λ_final (SPEC §7's default)
OSC_KEYS = ("osc/late_fraction", "osc/late_fraction_depthwise", "osc/late_fraction_other")


def recorded(run_dir: Path) -> tuple[dict, dict]:
    return (json.loads((run_dir / "config.json").read_text()), json.loads((run_dir / "result.json").read_text()))


def cell(config: dict) -> tuple[str, int, int]:
    return config["model"], int(config["bits"]), int(config["seed"])


def damp_weight(config: dict) -> float:
    if config["recipe"] != "damp":
        raise SystemExit(f"error: a {config['recipe']} run among the Damp runs (LSQ runs go after --lsq)")
    return float(config["methods"]["damp_weight"])


def choose(by_weight: dict[float, dict]) -> tuple[float, dict]:
    """(chosen λ, λ → paired calibration difference against the reference λ)."""
    if REFERENCE not in by_weight:
        raise SystemExit(f"error: no Damp run at the reference λ = {REFERENCE} to compare against")
    diffs = {w: paired_difference(by_weight[REFERENCE], scores) for w, scores in by_weight.items() if w != REFERENCE}
    if any(d is None for d in diffs.values()):
        raise SystemExit("error: a λ shares no (model, bits, seed) cell with the reference λ")
    best = max(diffs, key=lambda w: diffs[w].mean, default=REFERENCE)
    return (best if best != REFERENCE and diffs[best].mean > 0 else REFERENCE), diffs


def _mean(values) -> str:
    values = list(values)
    return f"{statistics.fmean(values):.2f}" if values else "–"


def report(arms: dict[float, dict[tuple, tuple[float, dict]]], metric: str) -> str:
    """`arms`: λ (0 = the LSQ runs) → cell → (calibration score, result.json)."""
    by_weight = {w: {c: score for c, (score, _) in runs.items()} for w, runs in arms.items() if w > 0}
    choice, diffs = choose(by_weight)
    cells = sorted(set.intersection(*(set(scores) for scores in by_weight.values())))
    lines = [f"Cells: {', '.join(f'{m} W{b}A{b} s{s}' for m, b, s in cells)}.", "",
             f"| λ_final | calib {metric} | − λ {REFERENCE} (95 % CI) | test {metric} (not used) "
             "| late osc. % | depthwise % | non-depthwise % |", "|---|---|---|---|---|---|---|"]
    for w in sorted(arms):
        runs = {c: arms[w][c] for c in cells if c in arms[w]}
        osc = [_mean(100 * r[k] for _, r in runs.values() if k in r) for k in OSC_KEYS]
        d = diffs.get(w)
        lines.append(f"| {'0 (LSQ)' if w == 0 else f'{w:g}'} | {_mean(s for s, _ in runs.values())} "
                     f"| {d.describe() if d else ('reference' if w == REFERENCE else '–')} "
                     f"| {_mean(r[metric] for _, r in runs.values())} | {' | '.join(osc)} |")
    lines += ["", f"Choice (highest mean paired calibration {metric} against λ {REFERENCE}, only when above it; "
                  f"else the reference's): **damp_weight = {choice:g}**."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished Damp runs (any λ; grouped by their recorded λ)")
    p.add_argument("--lsq", nargs="*", type=Path, default=[], help="LSQ runs of the same cells (λ = 0, reference)")
    p.add_argument("--out", type=Path, required=True, help="markdown report (its measurements: <out>.json)")
    a = p.parse_args(argv)
    scores = calib_scores(a.runs + a.lsq, a.out.with_suffix(".json"))
    arms: dict[float, dict] = {}
    metrics = set()
    for run_dir in a.runs + a.lsq:
        config, result = recorded(run_dir)
        w = 0.0 if run_dir in a.lsq else damp_weight(config)
        arms.setdefault(w, {})[cell(config)] = (scores[run_dir], result)
        metrics.add("top1" if "top1" in result else "map")
    if len(metrics) != 1:
        raise SystemExit("error: the runs mix classifiers (top1) and detectors (map)")
    return write_report(a.out, report(arms, metrics.pop()))


if __name__ == "__main__":
    sys.exit(main())
