"""Shared code of the table makers: read runs (local W&B files or the W&B API), aggregate seeds,
render Markdown / LaTeX / CSV. A cell is filled only from finished runs; otherwise it says "missing"."""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qat.logging.run_reader import by_name, read_api_runs, read_local_runs  # noqa: E402

MISSING = "missing"


def parse_args(table: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=f"Regenerate {table} from the W&B logs of its runs.")
    p.add_argument("--runs", type=Path, default=None, help="local directory with W&B run dirs (default: runs/)")
    p.add_argument("--preset", default=None, help="which preset's runs (default: $PRESET or proxy)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs through the W&B API instead")
    p.add_argument("--with-paper", action="store_true", help="show the paper's reported numbers beside ours")
    p.add_argument("--out", type=Path, default=REPO / "tables" / "out")
    return p.parse_args(argv)


def load_runs(args, table: str) -> dict:
    """name → RunRecord of the table's runs (newest finished run per name)."""
    if args.wandb:
        records = read_api_runs(args.wandb, filters={"group": table})
    else:
        import os
        preset = args.preset or os.environ.get("PRESET", "proxy")
        root = args.runs or Path(os.environ.get("QAT_RUNS", REPO / "runs")) / preset / table
        records = read_local_runs(root) if root.is_dir() else []
    return {name: rec for name, rec in by_name(records).items() if rec.group == table}


def seed_values(runs: dict, table: str, model: str, recipe: str, bits: int, key: str) -> list[float]:
    prefix = f"{table}/{model}/{recipe}/w{bits}a{bits}/s"
    return [float(r.summary[key]) for name, r in runs.items()
            if name.startswith(prefix) and r.finished and r.summary.get(key) is not None]


def fmt(values: list[float]) -> str:
    if not values:
        return MISSING
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.2f} (n=1)"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def fp_values(runs: dict, table: str, model: str, key: str = "fp_top1") -> list[float]:
    """FP accuracy as recorded by the QAT runs of `model` (one value per seed, they share one FP model)."""
    vals = {}
    for name, r in runs.items():
        if name.startswith(f"{table}/{model}/") and r.finished and r.summary.get(key) is not None:
            vals[name.rsplit("/s", 1)[-1]] = float(r.summary[key])
    return list(vals.values())


def paper_value(table: str, model: str, recipe: str, bits: int):
    data = yaml.safe_load((REPO / "tables" / "paper_results.yaml").read_text())
    return data.get(table, {}).get(model, {}).get(recipe, {}).get(bits)


def write_outputs(name: str, header: list[str], rows: list[list[str]], out: Path, title: str, notes: list[str]):
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += [""] + [f"- {n}" for n in notes]
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    with open(out / f"{name}.csv", "w", newline="") as f:
        csv.writer(f).writerows([header] + rows)
    esc = lambda s: s.replace("±", r"$\pm$").replace("_", r"\_").replace("%", r"\%")  # noqa: E731
    tex = [r"\begin{tabular}{" + "l" * len(header) + "}", r"\toprule", " & ".join(map(esc, header)) + r" \\",
           r"\midrule"] + [" & ".join(map(esc, r)) + r" \\" for r in rows] + [r"\bottomrule", r"\end{tabular}"]
    (out / f"{name}.tex").write_text("\n".join(tex) + "\n")
    print("\n".join(md))
    missing = sum(c.startswith(MISSING) for r in rows for c in r)
    print(f"\nwrote {out / name}.md/.tex/.csv ({missing} missing cell(s))")
