#!/usr/bin/env python
"""Upload a table's offline W&B runs to a W&B project: one `wandb sync` over every run directory of the table.

    python scripts/wandb_sync.py table5 --preset proxy --project qat-oscillation --entity ME [--with-fp] [--dry-run]

Each run keeps its W&B run inside its own directory, runs/<preset>/<table>/<model>/<recipe>/w<b>a<b>/s<seed>/
(Ultralytics runs too), as `wandb/offline-run-<time>-<id>/`; a resumed run has one such directory per segment,
all with the same id, and W&B joins them. `wandb sync` without paths looks only in `$WANDB_DIR/wandb/`, so it
finds none of them: this script lists them and passes them all. `--with-fp` adds the FP runs of the table's
models (runs/<preset>/fp/<model>/). `--dry-run` lists the run directories and prints the command instead of
running it. Needs `wandb login` (or WANDB_API_KEY) and a network; runs already synced are skipped by wandb.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from qat.config import FP_TABLE
from qat.logging.run_logger import DEFAULT_PROJECT

REPO = Path(__file__).resolve().parents[1]


def offline_run_dirs(root: Path) -> list[Path]:
    """Every `offline-run-*` directory under `root` that holds a `.wandb` record file, in path order."""
    return sorted(d for d in root.rglob("offline-run-*") if d.is_dir() and any(d.glob("run-*.wandb")))


def table_run_dirs(runs: Path, preset: str, table: str, with_fp: bool) -> list[Path]:
    """The table's offline runs, and with `with_fp` the FP runs of the models it has runs of."""
    root = runs / preset / table
    dirs = offline_run_dirs(root)
    if with_fp:
        models = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name != "logs")
        for model in models:
            dirs += offline_run_dirs(runs / preset / FP_TABLE / model)
    return dirs


def sync_command(dirs: list[Path], project: str, entity: str | None) -> list[str]:
    return ([sys.executable, "-m", "wandb", "sync", "--project", project] + (["--entity", entity] if entity else [])
            + [str(d) for d in dirs])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", help="the table's run group, e.g. table5 (a folder of runs/<preset>/)")
    p.add_argument("--preset", default=os.environ.get("PRESET", "proxy"), help="default: $PRESET, else proxy")
    p.add_argument("--runs", type=Path, default=Path(os.environ.get("QAT_RUNS", REPO / "runs")),
                   help="the runs root (default: $QAT_RUNS, else runs/)")
    p.add_argument("--project", default=DEFAULT_PROJECT, help="the W&B project to upload to")
    p.add_argument("--entity", default=None, help="the W&B entity (user or team; default: your login's)")
    p.add_argument("--with-fp", action="store_true", help="also the FP runs of the table's models")
    p.add_argument("--dry-run", action="store_true", help="list the run directories and the command; sync nothing")
    args = p.parse_args(argv)
    root = args.runs / args.preset / args.table
    if not root.is_dir():
        print(f"error: no runs of {args.table} at the {args.preset} preset: {root} does not exist", file=sys.stderr)
        return 2
    dirs = table_run_dirs(args.runs, args.preset, args.table, args.with_fp)
    if not dirs:
        print(f"error: no offline W&B runs under {root} (runs logged online are on W&B already)", file=sys.stderr)
        return 2
    cmd = sync_command(dirs, args.project, args.entity)
    if args.dry_run:
        print("\n".join(str(d) for d in dirs))
        print(f"# {len(dirs)} run directories; would run:\n" + shlex.join(cmd))
        return 0
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
