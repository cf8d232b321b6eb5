"""Where finished runs' wall time went (issue 16): the phases qat/run/wall_clock.py keeps in each result.json, as a
Markdown table of seconds and shares of the wall.

    python analysis/run_profile.py runs/proxy/table5/mobilenetv2/*/w3a3/s0
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qat.run.wall_clock import PHASES

COLUMNS = PHASES + ("other",)


def profile_row(run_dir: Path) -> dict | None:
    """The run's `time/*` values, or None when it has no result.json with them."""
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if "time/total_s" not in result:
        return None
    return {k.removeprefix("time/").removesuffix("_s"): v for k, v in result.items() if k.startswith("time/")}


def table(run_dirs: list[Path]) -> str:
    lines = ["| run | wall (s) | " + " | ".join(COLUMNS) + " | first iteration (s) |",
             "|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for run_dir in run_dirs:
        row = profile_row(run_dir)
        if row is None:
            lines.append(f"| {run_dir} | (no profile: not finished, or finished before runs kept one) |")
            continue
        total = row["total"]
        cells = [f"{row.get(c, 0.0):.1f} ({100 * row.get(c, 0.0) / total:.1f} %)" for c in COLUMNS]
        lines.append(f"| {run_dir} | {total:.1f} | " + " | ".join(cells) + f" | {row.get('first_iteration', 0.0):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="+")
    args = p.parse_args(argv)
    missing = [d for d in args.run_dirs if not d.is_dir()]
    if missing:
        print(f"error: not a directory: {missing[0]}", file=sys.stderr)
        return 2
    print(table(args.run_dirs), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
