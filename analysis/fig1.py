"""Fig. 1 from logged runs: one column per run (LSQ beside ours), each with
  (a) the histogram of one layer's latent weights w/s over the last iterations, quantization bin boundaries marked,
  (b) the latent weights w/s of that layer's most oscillating weights (one output channel) over those iterations,
      one colour each, each relative to its level at the start (so all share the bin boundaries k + 0.5 and the
      levels k, drawn; a crossing is a change of the weight's integer code),
  (c) that layer's weight and activation step sizes over those iterations, on separate axes.
The layer and weights are the ones the run's oscillation trackers found oscillating most (qat/logging/fig1_traces.py
chose and recorded them: W&B keys `fig1/*`). Titles name the model, preset, bits and recipe.

    python analysis/fig1.py --run runs/proxy/table5/mobilenetv2/lsq/w4a4/s0 \
        --run runs/proxy/table5/mobilenetv2/scalegrad+ead+afw/w4a4/s0 --out analysis/out/fig1

Reads run directories through qat/logging/run_reader.py only. Writes PNG and PDF.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from qat.logging.run_reader import RunRecord, by_name, read_local_runs

REPO = Path(__file__).resolve().parent.parent

NEAR_BOUNDARY = 0.05  # (b) zoom: weights whose w/s comes this close to a bin boundary
RECIPE_NAMES = {"scalegrad+ead+afw": "ours (ScaleGrad+EAD+AFW)", "ours": "ours (ScaleGrad+EAD+AFW)", "lsq": "LSQ"}


class Fig1Error(Exception):
    """A run that cannot be drawn; the message names it."""


@dataclass
class Fig1Run:
    """What Fig. 1 draws of one run: its identity and its `fig1/*` record."""
    name: str
    model: str
    preset: str
    bits: str
    recipe: str
    data: dict

    @property
    def levels(self) -> tuple[int, int]:
        qmin, qmax = self.data["fig1/levels"]
        return int(qmin), int(qmax)


def load_run(path: Path) -> Fig1Run:
    """The run under `path` (a run directory) with its last logged Fig. 1 record."""
    records = list(by_name(read_local_runs(path)).values())
    if not records:
        raise Fig1Error(f"no W&B run found under {path}")
    record = records[0]
    rows = [row for row in record.history if "fig1/w_over_s" in row]
    if not rows:
        old = any(k.startswith("fig1/w2_ch0/") for row in record.history for k in row)
        raise Fig1Error(f"run {record.name} ({path}) logged no Fig. 1 traces (fig1/w_over_s)"
                        + ("; it has the old fixed-layer traces (fig1/w2_ch0/*): retrain it" if old else ""))
    return Fig1Run(data=max(rows, key=lambda r: r.get("_step", 0)), **identity(record))


def identity(record: RunRecord) -> dict:
    """Model, recipe and bits from the run name `{table}/{model}/{recipe}/w{b}a{b}/s{seed}`; the preset from the
    config (classification runs hold it flat, detection runs under `detection_config` or `detection_run`)."""
    parts = record.name.split("/")
    model, recipe, bits = (parts[1], parts[2], parts[3]) if len(parts) == 5 else (record.name, "?", "?")
    config = record.config
    preset = config.get("preset") or next((config[k].get("preset") for k in ("detection_config", "detection_run")
                                           if isinstance(config.get(k), dict) and config[k].get("preset")), "?")
    return {"name": record.name, "model": model, "preset": str(preset), "bits": bits.upper(), "recipe": recipe}


def draw(runs: list[Fig1Run]):
    """The figure: one column per run, rows (a), (b), (b) zoom, (c) weight step, (c) activation step."""
    import matplotlib.pyplot as plt

    shared = [f for f in ("model", "preset", "bits") if len({getattr(r, f) for r in runs}) == 1]
    fig = plt.figure(figsize=(max(9.0, 6.5 * len(runs)), 15), layout="constrained")
    grid = fig.add_gridspec(5, len(runs), height_ratios=[3, 3.4, 2, 1.3, 1.3])
    for col, run in enumerate(runs):
        own = ", ".join(f"{f} {getattr(run, f)}" for f in ("model", "preset", "bits") if f not in shared)
        axes = [fig.add_subplot(grid[row, col]) for row in range(5)]
        axes[0].set_title(f"{RECIPE_NAMES.get(run.recipe, run.recipe)}" + (f" — {own}" if own else "")
                          + f"\n(a) layer {run.data['fig1/layer']}: latent weights, last "
                            f"{len(run.data['fig1/iterations'])} iterations", fontsize=10)
        draw_histogram(axes[0], run)
        draw_traces(axes[1], axes[2], run)
        draw_steps(axes[3], axes[4], run)
    title = ", ".join(f"{f} {getattr(runs[0], f)}" for f in shared)
    fig.suptitle("Fig. 1 — weight oscillations in QAT" + (f": {title}" if title else ""), fontsize=12)
    return fig


def boundaries(qmin: int, qmax: int) -> list[float]:
    """The quantization thresholds k + 0.5 between adjacent levels of the grid [qmin, qmax]."""
    return [k + 0.5 for k in range(qmin, qmax)]


def draw_histogram(ax, run: Fig1Run) -> None:
    qmin, qmax = run.levels
    ax.stairs(run.data["fig1/hist_counts"], run.data["fig1/hist_edges"], fill=True, alpha=0.7, color="tab:blue")
    for b in boundaries(qmin, qmax):
        ax.axvline(b, color="0.3", ls="--", lw=0.8, gid="boundary")
    ax.set_xticks(range(qmin, qmax + 1))
    ax.set(xlim=(qmin - 0.5, qmax + 0.5), xlabel="w / s  (integer: quantization level, dashed: bin boundary)",
           ylabel="weights × iterations")


def codes(trace: list[float], qmin: int, qmax: int) -> list[int]:
    """The integer codes clamp(round(w/s)) a latent trace quantizes to."""
    return [min(qmax, max(qmin, round(v))) for v in trace]


def draw_traces(ax, ax_zoom, run: Fig1Run) -> None:
    """(b): each weight's w/s relative to its level at the window's start, so that every trace shares the bin
    boundaries (±0.5, ±1.5, …) however far apart the levels are; a dot marks each change of its integer code.
    (b, zoom): the weights that changed code or came within NEAR_BOUNDARY of a boundary, as w/s minus that boundary
    (the one first crossed, else the nearest): a latent weight's oscillation is often far smaller than a step,
    invisible at (b)'s scale."""
    import matplotlib.pyplot as plt

    d, (qmin, qmax) = run.data, run.levels
    its, values = d["fig1/iterations"], d["fig1/w_over_s"]
    colours = plt.get_cmap("tab10").colors
    offsets, crossed = [], []
    for j, (index, count) in enumerate(zip(d["fig1/weights"], d["fig1/counts"])):
        trace, colour = [row[j] for row in values], colours[j % len(colours)]
        code = codes(trace, qmin, qmax)
        start = code[0]
        changes = [i for i in range(1, len(code)) if code[i] != code[i - 1]]
        offsets += [v - start for v in trace]
        label = (f"w[{index}] at {start}" + (f", {count} osc. before" if d["fig1/rule"] == "tracker" else "")
                 + f", {len(changes)} code changes")
        ax.plot(its, [v - start for v in trace], color=colour, lw=1.1, label=label)
        ax.plot([its[i] for i in changes], [trace[i] - start for i in changes], "o", color=colour, ms=3)
        if changes:
            boundary = (code[changes[0] - 1] + code[changes[0]]) / 2
        else:
            boundary = min(boundaries(qmin, qmax), key=lambda b: min(abs(v - b) for v in trace))
        if changes or min(abs(v - boundary) for v in trace) < NEAR_BOUNDARY:
            ax_zoom.plot(its, [v - boundary for v in trace], color=colour, lw=1.1)
            ax_zoom.plot([its[i] for i in changes], [trace[i] - boundary for i in changes], "o", color=colour, ms=3)
            crossed.append(bool(changes))
    # Offsets beyond the grid's span are weights beyond the grid (or a diverged run): the axis stops at the span.
    span = qmax - qmin + 1
    low, high = max(min(min(offsets), -0.6), -span), min(max(max(offsets), 0.6), span)
    for k in range(math.floor(low), math.ceil(high) + 1):
        ax.axhline(k, color="0.6", ls=":", lw=0.8, gid="level", label="quantization level" if k == 0 else None)
        if low <= k + 0.5 <= high:
            ax.axhline(k + 0.5, color="0.2", ls="--", lw=0.9, gid="boundary",
                       label="bin boundary" if k == 0 else None)
    ax.set_ylim(low - 0.05, high + 0.05)
    chosen = "most oscillating weights" if d["fig1/rule"] == "tracker" else "weights nearest a boundary (fallback)"
    ax.set_title(f"(b) {chosen} of output channel {d['fig1/channel']} (dots: code changes)", fontsize=10)
    ax.set(xlabel="iteration", ylabel="latent w/s − starting level")
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    if crossed:
        ax_zoom.axhline(0, color="0.2", ls="--", lw=0.9, gid="boundary")
        ax_zoom.set_title(f"(b) zoom: {len(crossed)} weights near a boundary ({sum(crossed)} changed code), "
                          f"w/s − that boundary",
                          fontsize=10)
        ax_zoom.set(xlabel="iteration", ylabel="w/s − boundary")
        ax_zoom.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    else:
        ax_zoom.set_axis_off()
        ax_zoom.text(0.5, 0.5, f"(b) zoom: no traced weight came within {NEAR_BOUNDARY} of a boundary", ha="center",
                     va="center", transform=ax_zoom.transAxes, fontsize=10)


def draw_steps(ax_weight, ax_act, run: Fig1Run) -> None:
    d = run.data
    ax_weight.plot(d["fig1/iterations"], d["fig1/weight_step"], color="tab:red", lw=1.1, label="weight step s_w")
    ax_act.plot(d["fig1/iterations"], d["fig1/act_step"], color="tab:green", lw=1.1, label="activation step s_a")
    ax_weight.set_title(f"(c) step sizes of layer {d['fig1/layer']}", fontsize=10)
    ax_weight.set(ylabel="s_w")
    ax_act.set(xlabel="iteration", ylabel="s_a")
    for ax in (ax_weight, ax_act):
        ax.ticklabel_format(axis="y", useOffset=False, style="sci", scilimits=(-3, 3))
        ax.legend(fontsize=7, loc="upper right")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, action="append", required=True,
                   help="run directory; repeat for side-by-side columns (e.g. lsq, then scalegrad+ead+afw)")
    p.add_argument("--out", type=Path, default=REPO / "analysis" / "out" / "fig1",
                   help="output path without extension (default: analysis/out/fig1)")
    args = p.parse_args(argv)
    try:
        runs = [load_run(path) for path in args.run]
    except Fig1Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import matplotlib
    matplotlib.use("Agg")
    fig = draw(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(args.out.with_suffix("." + ext), dpi=150)
    print(f"wrote {args.out}.png and .pdf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
