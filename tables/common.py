"""Shared code of the table makers: read runs (local W&B files or the W&B API), aggregate seeds,
render Markdown / LaTeX / CSV. A cell is filled only from finished runs; otherwise it says "missing".
The table makers read run directories only, through qat.logging.run_reader (no torch, no launcher): a cell the
launcher filled with another table's identical run holds a pointer to that run (`reused_from.json`).

Each preset's tables go to their own folder (`tables/out/<preset>/`) and name the preset in their title, so a
smoke run never overwrites a proxy table."""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

try:  # the project's packages (scripts/setup.sh's .venv, qat installed there); outside it, one line, no traceback
    import yaml
    from qat.logging.run_reader import (REUSED_FROM_NAME, by_name, finished_record, read_api_runs, read_local_runs,
                                        reused_source, run_problem)
except ModuleNotFoundError as e:
    if (e.name or "").startswith("qat."):  # a module of the installed package itself: a bug, not the setup
        raise
    sys.exit(f"error: the table makers need the project's Python packages, and {e.name!r} is not installed for "
             f"{sys.executable}: run `source scripts/setup.sh` first (it creates .venv and puts it on PATH)")

MISSING = "missing"


def parse_args(table: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=f"Regenerate {table} from the W&B logs of its runs.")
    p.add_argument("--runs", type=Path, default=None, help="local directory with W&B run dirs "
                   "(default: runs/<preset>/<table>)")
    p.add_argument("--preset", default=None, help="which preset's runs (default: the <preset> of --runs "
                   "<preset>/<table>, else $PRESET, else proxy)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs through the W&B API instead")
    p.add_argument("--with-paper", action="store_true", help="show the paper's reported numbers beside ours")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: tables/out/<preset>, or $QAT_TABLES_OUT/<preset>)")
    args = p.parse_args(argv)
    if args.preset is None:
        from_runs = args.runs is not None and args.runs.name == table
        args.preset = args.runs.resolve().parent.name if from_runs else os.environ.get("PRESET") or "proxy"
    if args.out is None:
        args.out = Path(os.environ.get("QAT_TABLES_OUT", REPO / "tables" / "out")) / args.preset
    return args


def table_preset(runs: dict, preset: str) -> str:
    """The preset a table's title names: the one its runs recorded (`preset` in their config), else the preset
    the maker was asked for (no runs yet)."""
    recorded = sorted({str(r.config["preset"]) for r in runs.values() if r.config.get("preset")})
    return ", ".join(recorded) if recorded else preset


def load_runs(args, table: str) -> dict:
    """name → RunRecord of the table's runs (newest finished run per name).

    Local runs only (not with --wandb): a cell with no finished run of its own whose directory points to the
    identical run of another table that the launcher reused (`reused_runs`) takes that run, under the table's
    own name.
    """
    if args.wandb:
        records = read_api_runs(args.wandb, filters={"group": table, "config.preset": args.preset}, history=False)
        return {name: rec for name, rec in by_name(records).items() if rec.group == table}
    root = args.runs or Path(os.environ.get("QAT_RUNS", REPO / "runs")) / args.preset / table
    records = read_local_runs(root, with_history=False) if root.is_dir() else []  # tables read summaries
    warn_unreadable(root, records)
    runs = {name: rec for name, rec in by_name(records).items() if rec.group == table}
    return {**runs, **reused_runs(runs, table, root)}


def warn_unreadable(root: Path, records: list) -> None:
    """Name on stderr each run under `root` whose record could not be read (its cell says missing): a run
    directory holding result.json without a complete W&B record (damaged, cut short; qat/run_dir.py), and any
    other run whose W&B file is damaged."""
    named = []
    for done in sorted(root.rglob("result.json")) if root.is_dir() else []:
        problem = run_problem(done.parent, records)
        if problem:
            named.append(done.parent)
            print(f"warning: could not read run {done.parent.relative_to(root.parent)}: {problem}; its cell "
                  f"shows missing", file=sys.stderr)
    for r in records:
        if r.damage and not any(Path(p).is_relative_to(d) for p in r.path.split(";") for d in named):
            print(f"warning: could not read run {r.name or r.path}: its W&B file is damaged ({r.damage[0]})",
                  file=sys.stderr)


def reused_runs(own: dict, table: str, root: Path) -> dict:
    """Run name → record of the run another table finished, for each cell under `root` (the table's runs) whose
    directory holds the launcher's pointer to it and no finished run of its own. A pointer to a run that is
    not (or no longer) finished is named in a warning; its cell shows missing."""
    reused = {}
    for pointer in sorted(root.rglob(REUSED_FROM_NAME)) if root.is_dir() else []:
        cell = pointer.parent
        name = f"{table}/{cell.relative_to(root).as_posix()}"
        if name in own and own[name].finished:
            continue
        source = reused_source(cell)
        record = finished_record(source) if source is not None else None
        if record is None:
            print(f"warning: run {name} was reused from {source or pointer}, which holds no finished run; its cell "
                  f"shows missing", file=sys.stderr)
            continue
        reused[name] = record
    return reused


def reuse_notes(runs: dict, table: str) -> list[str]:
    """One note line naming the other tables whose runs fill cells here (none if no cell is borrowed)."""
    counts = Counter(r.group for r in runs.values() if r.group != table)
    if not counts:
        return []
    return ["Cells reused from identical runs of other tables: "
            + ", ".join(f"{t} ({n} run{'s' if n != 1 else ''})" for t, n in sorted(counts.items()))]


OURS_NOTE = ("Our numbers: mean ± std over seeds of finished runs (n = seeds); 'missing' = no finished run "
             "(absent, crashed or still running).")


def seed_values(runs: dict, table: str, model: str, recipe: str, bits: int, key: str) -> list[float]:
    prefix = f"{table}/{model}/{recipe}/w{bits}a{bits}/s"
    return [float(r.summary[key]) for name, r in runs.items()
            if name.startswith(prefix) and r.finished and r.summary.get(key) is not None]


def seed_map(runs: dict, table: str, model: str, recipe: str, bits: int, key: str) -> dict[int, float]:
    """seed → value of `key` of the finished runs of one cell (what paired differences pair on)."""
    prefix = f"{table}/{model}/{recipe}/w{bits}a{bits}/s"
    return {int(name[len(prefix):]): float(r.summary[key]) for name, r in runs.items()
            if name.startswith(prefix) and name[len(prefix):].isdigit() and r.finished
            and r.summary.get(key) is not None}


def claim_notes(runs: dict, table: str, model: str, label: str, key: str, bits: int,
                pairs: list[tuple[str, str, str, str]], claimed_sign: int = 1) -> list[str]:
    """One note per (baseline, method) pair: method − baseline over paired seeds with its 95 % interval, the
    paper's difference where it reports both, and the verdict against the paper's direction (tables/paired.py;
    without paper numbers for this model, the direction the paper claims: `claimed_sign` +1 = the method better,
    −1 = worse). Pairs: (baseline, method, labels)."""
    from paired import paired_difference
    notes = []
    for base, method, base_label, method_label in pairs:
        diff = paired_difference(seed_map(runs, table, model, base, bits, key),
                                 seed_map(runs, table, model, method, bits, key))
        if diff is None:
            continue
        paper_base, paper_method = paper_value(table, model, base, bits), paper_value(table, model, method, bits)
        paper = None if paper_base is None or paper_method is None else paper_method - paper_base
        sign = claimed_sign if paper is None else -1 if paper < 0 else 1
        claimed = "; paper: method better" if sign > 0 else "; paper: method worse"
        notes.append(f"{label} W{bits}A{bits}, {method_label} − {base_label}: {diff.describe()}"
                     + (f"; paper {paper:+.1f}" if paper is not None else claimed)
                     + f" → {diff.verdict(sign)}")
    return notes


def step_bound_notes(runs: dict, table: str, models: list[tuple[str, str]], recipes: list[tuple[str, str]],
                     bits: list[int]) -> list[str]:
    """Did the step-update bound act (qat/step_bound.py, DEVIATIONS 2b)? Optimizer updates of a step size it cut,
    per run, for each (model, label) and bit width where runs logged it (presets with a bound)."""
    notes = []
    for model, label in models:
        for b in bits:
            cells = [f"{name} {fmt(vals, 0)}" for recipe, name in recipes
                     if (vals := seed_values(runs, table, model, recipe, b, "step_bound/updates_bounded"))]
            if cells:
                notes.append(f"Step-size updates cut by the step-update bound (DEVIATIONS 2b), {label} W{b}A{b}, "
                             f"per run: " + "; ".join(cells))
    return notes


def fmt(values: list[float], digits: int = 2) -> str:
    if not values:
        return MISSING
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def fp_values(runs: dict, table: str, model: str, key: str = "fp_top1") -> list[float]:
    """FP accuracy as recorded by the QAT runs of `model`, one value per distinct FP model: every seed's QAT
    starts from the one cached FP model, so n counts FP models, not QAT seeds."""
    vals = {float(r.summary[key]) for name, r in runs.items()
            if name.startswith(f"{table}/{model}/") and r.finished and r.summary.get(key) is not None}
    return sorted(vals)


def paper_value(table: str, model: str, recipe: str, bits: int):
    data = yaml.safe_load((REPO / "tables" / "paper_results.yaml").read_text())
    return data.get(table, {}).get(model, {}).get(recipe, {}).get(bits)


def paper_cell(table: str, model: str, recipe: str, bits: int) -> str:
    """The paper's number as printed (one decimal), empty where the paper has none."""
    v = paper_value(table, model, recipe, bits)
    return "" if v is None else f"{v:.1f}"


def fp_and_bits_cells(runs: dict, table: str, model: str, recipe: str, key: str, bits: list[int],
                      with_paper: bool) -> list[str]:
    """A model's FP value, then `recipe` at each bit-width: ours (mean ± std), each followed by the paper's
    number when `with_paper` (the layout of Tables III and IV)."""
    cells = [fmt(fp_values(runs, table, model, "fp_" + key))]
    cells += [paper_cell(table, model, "fp", 32)] if with_paper else []
    for b in bits:
        cells.append(fmt(seed_values(runs, table, model, recipe, b, key)))
        cells += [paper_cell(table, model, recipe, b)] if with_paper else []
    return cells


def write_outputs(name: str, header: list[str], rows: list[list[str]], out: Path, title: str, notes: list[str],
                  preset: str):
    """`name`.md / .tex / .csv in `out`; the title names the preset of the runs."""
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# {title} ({preset} preset)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
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
