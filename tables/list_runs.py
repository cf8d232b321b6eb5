"""Every finished run of a table, one CSV row each, from the runs' result.json files.

    python tables/list_runs.py table5 --preset proxy > tables/results/proxy/table5_runs.csv

Columns: the run's identity, its headline metric, the accuracy/mAP at each stage of the pipeline and the
oscillation / freezing / AFW statistics where the recipe has them. Unfinished runs are not listed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["model", "recipe", "bits", "seed", "top1", "map", "map50", "fp_top1", "fp_top1_prologue", "init_top1",
           "top1_trained", "osc/fraction_oscillating", "freeze/fraction_frozen", "afw/weights",
           "afw/changed_codes", "afw/soft_metric"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table")
    p.add_argument("--preset", default=os.environ.get("PRESET", "proxy"))
    p.add_argument("--runs", type=Path, default=None, help="runs root (default $QAT_RUNS or runs/)")
    args = p.parse_args(argv)
    root = (args.runs or Path(os.environ.get("QAT_RUNS", REPO / "runs"))) / args.preset / args.table
    if not root.is_dir():
        print(f"error: no runs under {root}", file=sys.stderr)
        return 2
    results = [json.loads(f.read_text()) for f in sorted(root.rglob("result.json"))]
    present = [c for c in COLUMNS if any(c in r for r in results)]
    writer = csv.writer(sys.stdout)
    writer.writerow(present)
    for r in sorted(results, key=lambda r: (r.get("model", ""), -(r.get("bits") or 32), r.get("recipe", ""),
                                            r.get("seed", 0))):
        writer.writerow(["" if r.get(c) is None else r[c] for c in present])
    return 0


if __name__ == "__main__":
    sys.exit(main())
