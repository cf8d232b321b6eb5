"""Fig. 1 from logged runs: (a) histogram of the 2nd quantized layer's latent weights by position within
their quantization bin, (b) trajectories of that layer's first-channel weights over the last iterations,
(c) weight and activation step sizes of the 3rd layer during Table I's frozen-weights phase.

    python analysis/fig1.py --run runs/proxy/table1/mobilenetv2/lsq/w4a4/s0 \
        --freeze-run runs/proxy/table1/mobilenetv2/lsq-freeze-weights/w4a4/s0 --out analysis/out/fig1

(a) and (b) come from an LSQ training run (W&B keys `fig1a/bin_position_counts`, `fig1/w2_ch0/<j>`),
(c) from a `lsq-freeze-weights` run (`fig1c/weight_step`, `fig1c/act_step`). Writes PNG and PDF.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from qat.logging.run_reader import by_name, read_local_runs  # noqa: E402


def load_run(path: Path):
    records = list(by_name(read_local_runs(path)).values())
    if not records:
        raise SystemExit(f"error: no W&B run found under {path}")
    return records[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="run directory of an LSQ (or any QAT) run")
    p.add_argument("--freeze-run", type=Path, help="run directory of a lsq-freeze-weights run (panel c)")
    p.add_argument("--out", type=Path, default=REPO / "analysis" / "out" / "fig1")
    args = p.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = load_run(args.run)
    counts = run.summary.get("fig1a/bin_position_counts")
    traces = sorted({k for row in run.history for k in row if k.startswith("fig1/w2_ch0/")},
                    key=lambda k: int(k.rsplit("/", 1)[1]))
    if counts is None and not traces:
        print(f"error: run {run.name} has no Fig. 1 data (fig1a/bin_position_counts, fig1/w2_ch0/*)", file=sys.stderr)
        return 2
    panels = 3 if args.freeze_run else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))

    axes[0].set(xlabel="w/s − round(w/s)  (position in the bin)", ylabel="weights",
                title="(a) 2nd layer latent weights")
    if counts is not None:
        edges = [-0.5 + i / len(counts) for i in range(len(counts) + 1)]
        axes[0].stairs(counts, edges, fill=True, alpha=0.7)
    else:  # runs logged before the histogram existed (Ultralytics runs before 2026-11-27)
        print(f"warning: run {run.name} logged no fig1a/bin_position_counts: panel (a) left empty", file=sys.stderr)
        axes[0].text(0.5, 0.5, "not logged by this run", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_xlim(-0.5, 0.5)

    for key in traces:
        steps = [row["_step"] for row in run.history if key in row]
        values = [row[key] for row in run.history if key in row]
        axes[1].plot(steps, values, lw=0.8)
    axes[1].set(xlabel="iteration", ylabel="w / s", title="(b) 2nd layer, 1st channel")

    if args.freeze_run:
        frozen = load_run(args.freeze_run)
        for key, label in (("fig1c/weight_step", "weight step"), ("fig1c/act_step", "activation step")):
            steps = [row["_step"] for row in frozen.history if key in row]
            values = [row[key] for row in frozen.history if key in row]
            if values:
                axes[2].plot(steps, [v / values[0] for v in values], label=label, lw=0.8)
        axes[2].set(xlabel="iteration (frozen weights)", ylabel="s / s₀", title="(c) 3rd layer step sizes")
        axes[2].legend()
    fig.suptitle(f"{run.name}")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(args.out.with_suffix("." + ext), dpi=150)
    print(f"wrote {args.out}.png and .pdf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
