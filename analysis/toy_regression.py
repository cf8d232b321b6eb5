"""Nagel et al.'s toy regression (2022, §3): weights whose optimum lies between two grid points oscillate
under QAT with the straight-through estimator, and each anti-oscillation method damps that.

The model is one quantized linear layer y = Ŵx with N independent weights (x a scalar, W ∈ R^{N×1}); the
target is y* = W*x with every w*_i/s placed a fraction u_i of a step above a grid level (u_i ∈ [0.2, 0.8]),
so no grid point fits it. Loss: Σ_i (ŷ_i − y*_i)², averaged over a batch of x ~ N(0, 1). Every method runs
through the library's own code: the quantizer (`lsq_fake_quant`, ScaleGrad's gradients), its hooks (EAD,
dampening, freezing) and `qat_step`, and the oscillation tracker counts the sign flips of each weight's integer
code (SPEC §4). The grid is fixed by default, as in Nagel's toy; `--learn-step` trains the step size (LSQ).

    python analysis/toy_regression.py --seeds 0 1 2   # oscillation counts vs LSQ (Markdown), figure of seed 0
docs/TOY_REGRESSION.md has the measured table and the figure.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from qat.baselines.damp import DampeningHook
from qat.ead import EADHook
from qat.freeze import FreezeHook, OscillationTrackingHook
from qat.hooks import TrainState
from qat.loop import qat_step
from qat.modules import convert, step_parameters

BITS = 3
STEP = 0.1   # initial step size: targets sit on the 3-bit grid's levels −3 … 2 plus u
METHODS = ("lsq", "damp", "freeze", "scalegrad", "pulsesmooth", "distance", "ead")
GRADIENT_MODES = {"scalegrad": (0.1, 1.0), "pulsesmooth": (0.1, None), "distance": (None, 1.0)}  # SPEC §2 defaults


@dataclass
class ToySettings:
    weights: int = 256
    iterations: int = 2000
    lr: float = 0.001
    learn_step: bool = False
    batch: int = 32
    seed: int = 0
    tau_fraction: float = 0.0   # EAD from the start: the toy compares each method over the whole run
    damp_weight: float = 1.0    # λ_final; the paper's 0.1 is sized against a network's loss, not this toy's
    traced: tuple[int, ...] = (0, 1, 2)  # weights whose latent value w/s is recorded every iteration


@dataclass
class ToyRun:
    method: str
    oscillations: int            # Σ over weights of the tracker's count
    frozen: int                  # weights frozen at the end (freeze only)
    traces: torch.Tensor         # [iterations, len(traced)] latent w/s of the traced weights
    steps: torch.Tensor          # [iterations] the step size
    targets: torch.Tensor        # [len(traced)] w*/s of the traced weights
    per_iteration: list = field(default_factory=list)  # oscillations summed over weights, per iteration

    def late_oscillations(self, fraction: float = 0.2) -> int:
        """Oscillations in the last `fraction` of the run, when the weights have reached their boundaries."""
        return sum(self.per_iteration[int(len(self.per_iteration) * (1 - fraction)):])


def toy_problem(settings: ToySettings):
    """(quantized model, target weights W*) with w*/s = level + u, u ∈ [0.2, 0.8]; latent weights start at W*."""
    g = torch.Generator().manual_seed(settings.seed)
    levels = torch.randint(-3, 3, (settings.weights, 1), generator=g).float()
    u = 0.2 + 0.6 * torch.rand(settings.weights, 1, generator=g)
    target = STEP * (levels + u)
    model = nn.Sequential(nn.Linear(1, settings.weights, bias=False))
    convert(model, BITS, quantize_first_last=True)
    layer = model[0]
    layer.input_quant.enabled = False  # the input x is not quantized: the toy is about the weights
    with torch.no_grad():
        layer.weight.copy_(target)
        layer.weight_quant.step.fill_(STEP)
    layer.weight_quant.step.requires_grad_(settings.learn_step)
    return model, target


def hooks_for(method: str, settings: ToySettings):
    tau = int(settings.tau_fraction * settings.iterations)
    hooks = [OscillationTrackingHook()]
    if method == "damp":
        hooks.append(DampeningHook(final_weight=settings.damp_weight))
    elif method == "freeze":
        hooks.append(FreezeHook(BITS))
    elif method == "ead":
        hooks.append(EADHook(tau))
    elif method != "lsq" and method not in GRADIENT_MODES:
        raise ValueError(f"toy regression: unknown method {method!r}; choose from {', '.join(METHODS)}")
    return hooks


def simulate(method: str, settings: ToySettings = ToySettings()) -> ToyRun:
    torch.manual_seed(settings.seed)
    model, target = toy_problem(settings)
    layer = model[0]
    if method in GRADIENT_MODES:  # ScaleGrad or one of its parts (PulseSmooth δ, distance factor k)
        layer.weight_quant.pulse_delta, layer.weight_quant.dist_k = GRADIENT_MODES[method]
    hooks = hooks_for(method, settings)
    state = TrainState(model, total_iterations=settings.iterations)
    for h in hooks:
        h.on_train_start(state)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    steps = step_parameters(model)
    g = torch.Generator().manual_seed(settings.seed + 1)
    traced = list(settings.traced)
    traces, step_trace, per_iteration = [], [], []
    model.train()
    for _ in range(settings.iterations):
        x = torch.randn(settings.batch, 1, generator=g)
        before = 0 if layer.weight_quant.tracker.count is None else int(layer.weight_quant.tracker.count.sum())
        loss = ((model(x) - x @ target.T) ** 2).sum(1).mean()  # the forward updates the tracker
        qat_step(loss, optimizer, hooks, state, steps)
        with torch.no_grad():
            s = float(layer.weight_quant.step)
            traces.append(layer.weight[traced, 0] / s)
            step_trace.append(s)
        after = int(layer.weight_quant.tracker.count.sum()) if layer.weight_quant.tracker.count is not None else 0
        per_iteration.append(after - before)
    wq = layer.weight_quant
    frozen = int(wq.frozen.mask.sum()) if wq.frozen is not None else 0
    return ToyRun(method, int(wq.tracker.count.sum()), frozen, torch.stack(traces), torch.tensor(step_trace),
                  (target[traced, 0] / STEP), per_iteration)


def draw(runs: list[ToyRun], path: Path, settings: ToySettings) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs), 5.6), squeeze=False)
    last = slice(settings.iterations - 60, settings.iterations)
    t = torch.arange(settings.iterations)[last]
    for col, run in enumerate(runs):
        ax = axes[0, col]
        for k in range(run.traces.shape[1]):
            v = run.traces[last, k]
            boundary = torch.floor(v[-1]) + 0.5  # the bin boundary the weight ends next to
            ax.plot(t, v - boundary, lw=0.9, marker=".", ms=2, label=f"w{k}: w*/s = {run.targets[k]:.2f}")
        ax.axhline(0.0, color="0.3", lw=0.8, ls="--")  # the bin boundary k + 0.5: crossing it flips the code
        ax.set_title(f"{run.method}: {run.oscillations} oscillations" + (f", {run.frozen} frozen" if run.frozen else ""),
                     fontsize=9)
        ax.set_ylabel("w/s − its bin boundary (last 60 it.)" if col == 0 else "")
        ax.legend(fontsize=6, loc="upper right")
        cumulative = torch.tensor(run.per_iteration).cumsum(0)
        axes[1, col].plot(torch.arange(settings.iterations), cumulative, lw=1)
        axes[1, col].set_xlabel("iteration")
        axes[1, col].set_ylabel("oscillations so far" if col == 0 else "")
    grid = "learned step" if settings.learn_step else "fixed grid"
    fig.suptitle(f"Toy regression (Nagel et al. 2022): {settings.weights} weights between grid points, "
                 f"W{BITS}, {grid}, SGD lr {settings.lr}, {settings.iterations} iterations, seed {settings.seed}; "
                 "top: latent weights around the bin boundary (dashed), bottom: all weights' oscillations", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "toy_regression.png",
                   help="figure of the first seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--lr", type=float, default=ToySettings.lr, help="SGD learning rate")
    p.add_argument("--learn-step", action="store_true", help="train the step size too (LSQ); default: fixed grid")
    args = p.parse_args(argv)
    ratios, late = {m: [] for m in METHODS}, {m: [] for m in METHODS}
    counts, frozen = [], []
    for seed in args.seeds:
        settings = ToySettings(seed=seed, lr=args.lr, learn_step=args.learn_step)
        runs = [simulate(m, settings) for m in METHODS]
        if seed == args.seeds[0]:
            draw(runs, args.out, settings)
        counts.append(runs[0].oscillations / (settings.weights * settings.iterations))
        frozen.append(runs[METHODS.index("freeze")].frozen)
        for run in runs:
            ratios[run.method].append(run.oscillations / runs[0].oscillations)
            late[run.method].append(run.late_oscillations() / runs[0].late_oscillations())
    grid = "learned step" if args.learn_step else "fixed grid"
    print(f"{grid}, lr {args.lr}, seeds {' '.join(map(str, args.seeds))}: LSQ oscillates "
          f"{100 * sum(counts) / len(counts):.1f} % of iterations per weight; freeze froze {frozen} weights")
    print("| method | oscillations / LSQ's, whole run | last 20 % of the run |\n|---|---|---|")
    for m in METHODS:
        cells = [f"{sum(r) / len(r):.3f} ({min(r):.3f}–{max(r):.3f})" for r in (ratios[m], late[m])]
        print(f"| {m} | {cells[0]} | {cells[1]} |")
    print("(mean over seeds, min–max in brackets)")
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
