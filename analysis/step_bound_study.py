#!/usr/bin/env python
"""Whether the Ultralytics proxy bounds a step size's update (`step_update_bound`, qat/step_bound.py, DEVIATIONS 2b),
chosen on the CALIBRATION split.

Two arms of finished runs, paired by (model, recipe, bits, seed): "none" (trained without a bound) and "bounded"
(trained with `--step-update-bound b`, one b for the whole arm). Each run's final model is evaluated on FMNIST-Det's
calib split (analysis/detector_split_eval.py; never on val, which the tables report). Beside it: how often the
bound cut an update (the run's `step_bound/updates_bounded`) and the largest final weight step against the LSQ run
of the same arm and cell (analysis/step_ratio.py; a trapped step ends 16-68× LSQ's). The choice, computed here:
the bound when its mean paired calibration mAP over every pair is higher, else none (the paper's training).

    python analysis/step_bound_study.py --none runs/proxy/table5_unbounded/yolov8n/lsq/w*/s* \
        runs/proxy/table2_unbounded/yolov8n/{damp,freeze}/w*/s* --bounded runs/proxy/table5/yolov8n/lsq/w*/s* \
        runs/proxy/table2/yolov8n/{damp,freeze}/w*/s* --out docs/step_bound_study.md

Each run's calibration mAP is kept in `<out>.json` as it is measured: a killed study resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from analysis.calib_scores import calib_scores, write_report  # noqa: E402
from analysis.step_ratio import largest_ratio  # noqa: E402
from tables.paired import paired_difference, paired_differences_by  # noqa: E402

ARMS = ("none", "bounded")


def cell(run_dir: Path) -> tuple[str, str, int, int]:
    c = json.loads((run_dir / "config.json").read_text())
    return c["model"], c["recipe"], int(c["bits"]), int(c["seed"])


def bound_of(run_dir: Path) -> float | None:
    c = json.loads((run_dir / "config.json").read_text())
    return c.get("step_update_bound") or c.get("preset_values", {}).get("step_update_bound") or None


def choose(by_arm: dict[str, dict]) -> tuple[str, object]:
    diff = paired_difference(by_arm["none"], by_arm["bounded"])
    if diff is None:
        raise SystemExit("error: the two arms share no (model, recipe, bits, seed) cell")
    return ("bounded" if diff.mean > 0 else "none"), diff


def step_ratio_to_lsq(runs: dict[tuple, Path]) -> dict[tuple, str]:
    """Cell → the largest final weight-step ratio to the same arm's LSQ run of that cell ("–" without one)."""
    out = {}
    for c, run_dir in runs.items():
        lsq = runs.get((c[0], "lsq", c[2], c[3]))
        out[c] = "–" if lsq is None or lsq == run_dir else f"{largest_ratio(run_dir, lsq)[0]:.1f}×"
    return out


def report(by_arm: dict[str, dict], runs: dict[str, dict[tuple, Path]], bound: float) -> str:
    choice, diff = choose(by_arm)
    cells = sorted(set(by_arm["none"]) & set(by_arm["bounded"]))
    ratios = {arm: step_ratio_to_lsq(runs[arm]) for arm in ARMS}
    result = {arm: {c: json.loads((runs[arm][c] / "result.json").read_text()) for c in cells} for arm in ARMS}
    lines = [f"Bound b = {bound} (each optimizer update keeps a step size within a factor {1 + bound:g}).", "",
             "| model | recipe | bits | seed | calib mAP, none | calib mAP, bounded | bounded − none "
             "| val mAP none / bounded | updates bounded | largest step / LSQ's, none / bounded |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        a, b = by_arm["none"][c], by_arm["bounded"][c]
        cut = result["bounded"][c].get("step_bound/updates_bounded", "–")
        lines.append(f"| {c[0]} | {c[1]} | W{c[2]}A{c[2]} | {c[3]} | {a:.2f} | {b:.2f} | {b - a:+.2f} "
                     f"| {result['none'][c]['map']:.2f} / {result['bounded'][c]['map']:.2f} | {cut} "
                     f"| {ratios['none'][c]} / {ratios['bounded'][c]} |")
    lines += ["", f"Paired difference bounded − none on the calib split, every pair: **{diff.describe()}**."]
    by_group = paired_differences_by(by_arm["none"], by_arm["bounded"], group=1)  # per recipe
    lines += [f"{recipe}: {d.describe()}." for recipe, d in by_group.items()]
    lines += ["", f"Choice (higher mean calibration mAP; ties: none, the paper's training): "
                  f"**step_update_bound = {bound if choice == 'bounded' else None}**."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--none", nargs="+", type=Path, required=True, help="runs trained without a bound")
    p.add_argument("--bounded", nargs="+", type=Path, required=True, help="runs trained with one bound b")
    p.add_argument("--out", type=Path, required=True, help="markdown report (its measurements: <out>.json)")
    a = p.parse_args(argv)
    bounds = {bound_of(r) for r in a.bounded}
    if len(bounds) != 1 or None in bounds:
        raise SystemExit(f"error: the bounded arm must share one bound, its runs have {sorted(map(str, bounds))}")
    if any(bound_of(r) is not None for r in a.none):
        raise SystemExit("error: a run of the 'none' arm trained with a bound")
    runs = {"none": {cell(r): r for r in a.none}, "bounded": {cell(r): r for r in a.bounded}}
    maps = calib_scores(a.none + a.bounded, a.out.with_suffix(".json"))
    by_arm = {arm: {c: maps[r] for c, r in runs[arm].items()} for arm in ARMS}
    return write_report(a.out, report(by_arm, runs, bounds.pop()))


if __name__ == "__main__":
    sys.exit(main())
