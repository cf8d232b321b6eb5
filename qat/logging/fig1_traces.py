"""Fig. 1's data, recorded during training: the weights that oscillate most, followed over the last iterations.

Window: the last min(fig1_iterations, ⌊T/2⌋) of the T training iterations. At most the last half, so that when the
weights are chosen (the window's first iteration) the oscillation trackers have counted over at least the first half.

Choice (`choose_traced_weights`, once, at the window's first iteration), from the trackers (qat/oscillation.py):
  layer    the low-bit layer with the highest share of oscillating weights (tracker frequency > 0.005, the
           threshold of OscillationTrackingHook's osc/fraction_oscillating); ties, and runs too short for any
           frequency to pass it, go to the higher mean oscillation count
  channel  that layer's output channel with the most oscillations (sum of tracker counts)
  weights  the channel's k weights with the highest counts (all of them when it has fewer); equal counts go to the
           weight nearer a bin boundary (largest |w/s − round(w/s)|, the likeliest to oscillate next)
Fallback, when no tracker has counted any oscillation yet (no low-bit layer, or a window that starts at the first
iterations): the 2nd quantized layer (the paper's "2nd layer"), channel 0, its k weights nearest a bin boundary.
The rule used is logged (`fig1/rule`).

Each window iteration records on the device, without a host sync: w/s of the chosen weights, the layer's weight
step s (the chosen channel's, for per-channel steps) and activation step, and a histogram of all the layer's latent
w/s over its grid [qmin − 0.5, qmax + 0.5] (weights beyond it in the edge bins). At each epoch end the new rows
come to the host (one sync an epoch) and `epoch_metrics` returns everything recorded so far under `fig1/*` keys
(FIG1_KEYS), which the trainer logs in that epoch's W&B row; analysis/fig1.py reads the last row holding them.
The choice and the rows travel in the hook's checkpoint state, so a resumed run and a branch (ours from scalegrad
at τ) keep one trace over the whole window.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..hooks import TrainingHook, TrainState
from ..modules import quant_layers

OSCILLATING_FREQUENCY = 0.005  # as OscillationTrackingHook: a weight oscillates when its frequency exceeds this
HIST_BINS_PER_LEVEL = 10
FIG1_KEYS = ("fig1/layer", "fig1/rule", "fig1/layer_share", "fig1/channel", "fig1/weights", "fig1/counts",
             "fig1/levels", "fig1/iterations", "fig1/w_over_s", "fig1/weight_step", "fig1/act_step",
             "fig1/hist_edges", "fig1/hist_counts")


def trace_window(total_iterations: int, fig1_iterations: int) -> int:
    """Iterations recorded: the last min(fig1_iterations, ⌊T/2⌋), at least one."""
    return max(1, min(int(fig1_iterations), total_iterations // 2))


@dataclass
class TraceChoice:
    layer: str            # module name of the chosen layer
    channel: int          # its output channel the weights belong to
    weights: list[int]    # flat indices into layer.weight
    counts: list[int]     # their oscillation counts when chosen (0 under the fallback)
    share: float          # the layer's share of oscillating weights when chosen
    rule: str             # "tracker" or "fallback: ..." (see the module docstring)


@torch.no_grad()
def choose_traced_weights(layers: list[tuple[str, torch.nn.Module]], k: int = 8,
                          threshold: float = OSCILLATING_FREQUENCY) -> TraceChoice:
    """The layer, channel and weights Fig. 1 follows (module docstring), from `layers` = quant_layers(model)."""
    if not layers:
        raise ValueError("Fig. 1 traces need at least one quantized layer")
    scored = []
    for name, layer in layers:
        tracker = layer.weight_quant.tracker
        if layer.weight_quant.bits <= 4 and tracker is not None and tracker.count is not None:
            scored.append((tracker.fraction_oscillating(threshold), float(tracker.count.float().mean()), name, layer))
    if scored and max(mean_count for _, mean_count, _, _ in scored) > 0:
        share, _, name, layer = max(scored, key=lambda s: (s[0], s[1]))  # first of equals: the earlier layer
        counts = layer.weight_quant.tracker.count.reshape(layer.weight.shape[0], -1)
        channel = int(torch.argmax(counts.sum(1)))  # argmax: the first of equals
        rule = "tracker"
    else:
        candidates = [(n, m) for n, m in layers if m.weight_quant.bits <= 4] or layers
        name, layer = candidates[1] if len(candidates) > 1 else candidates[0]
        counts = torch.zeros_like(layer.weight, dtype=torch.int64).reshape(layer.weight.shape[0], -1)
        channel, share = 0, 0.0
        rule = "fallback: no oscillation counted yet; 2nd quantized layer, channel 0"
    # Within the channel: the highest counts first, equal counts (and the zero-count rest) by nearness to a bin
    # boundary (|w/s − round(w/s)| → 0.5); weights beyond the grid, which cannot change level, last.
    wq = layer.weight_quant
    v = (layer.weight / wq.step).reshape(layer.weight.shape[0], -1)[channel].double()
    in_grid = (v >= wq.qmin - 0.5) & (v <= wq.qmax + 0.5)
    score = counts[channel].double() + torch.where(in_grid, (v - torch.round(v)).abs(), torch.full_like(v, -1.0))
    order = torch.sort(score, descending=True, stable=True).indices[:k]
    return TraceChoice(name, channel, [channel * counts.shape[1] + int(j) for j in order],
                       [int(counts[channel, j]) for j in order], share, rule)


def grid_edges(qmin: int, qmax: int, per_level: int = HIST_BINS_PER_LEVEL) -> torch.Tensor:
    """Histogram bin edges over [qmin − 0.5, qmax + 0.5] in units of the step, `per_level` bins per level."""
    n = (qmax - qmin + 1) * per_level
    return torch.linspace(qmin - 0.5, qmax + 0.5, n + 1, dtype=torch.float64)


class Fig1TraceHook(TrainingHook):
    """Records Fig. 1's traces over the last iterations (module docstring). Added by every QAT trainer."""

    def __init__(self, fig1_iterations: int = 200, k: int = 8):
        self.fig1_iterations, self.k = fig1_iterations, k
        self.model = None
        self.window = self.window_start = None  # iterations t in (window_start, T] are recorded (t from 1)
        self.choice: TraceChoice | None = None
        self.rows: list[list[float]] = []       # host: per iteration, w/s of each weight, weight step, act step
        self.iterations: list[int] = []
        self.hist: list[int] | None = None      # host: histogram counts flushed so far
        self._layer = None
        self._buffer = None                     # device: rows not yet flushed
        self._pending: list[int] = []           # their iterations
        self._hist = None                       # device: histogram counts not yet flushed
        self._edges = None
        self._logged = 0                        # rows already returned by epoch_metrics

    def on_train_start(self, state: TrainState) -> None:
        self.model = state.model
        self.window = trace_window(state.total_iterations, self.fig1_iterations)
        self.window_start = state.total_iterations - self.window

    @torch.no_grad()
    def after_optimizer_step(self, state: TrainState) -> None:
        t = state.iteration + 1  # the step just taken
        if t <= self.window_start or t > state.total_iterations:
            return
        if self.choice is None:
            self.choice = choose_traced_weights(list(quant_layers(self.model)), self.k)
        if self._layer is None:
            self._start_recording()
        layer, wq = self._layer, self._layer.weight_quant
        step = wq.step.detach()
        v = (layer.weight.detach() / step).flatten()
        channel_step = step.flatten()[self.choice.channel if step.numel() > 1 else 0]
        row = len(self._pending)
        self._buffer[row, :-2] = v[self._index]
        self._buffer[row, -2] = channel_step
        self._buffer[row, -1] = layer.input_quant.step.detach().reshape(())
        self._pending.append(t)
        # a deterministic histogram (searchsorted on the sorted values; histc/bincount are not on CUDA)
        below = torch.searchsorted(torch.sort(v.to(self._edges.dtype)).values, self._edges)
        self._hist += below[1:] - below[:-1]

    def _start_recording(self) -> None:
        layer = dict(quant_layers(self.model))[self.choice.layer]
        wq = layer.weight_quant
        device = layer.weight.device
        self._layer = layer
        self._index = torch.tensor(self.choice.weights, device=device)
        self._buffer = torch.zeros(self.window, len(self.choice.weights) + 2, device=device)
        edges = grid_edges(wq.qmin, wq.qmax)
        edges[0], edges[-1] = -float("inf"), float("inf")  # weights beyond the grid count in the edge bins
        self._edges = edges.to(device=device, dtype=torch.float32 if device.type == "mps" else torch.float64)
        self._hist = torch.zeros(len(edges) - 1, dtype=torch.int64, device=device)
        self._levels = (wq.qmin, wq.qmax)

    def _flush(self) -> None:
        """The device rows and histogram to the host: one sync."""
        if not self._pending:
            return
        self.rows += self._buffer[:len(self._pending)].tolist()
        self.iterations += self._pending
        counts = self._hist.tolist()
        self.hist = counts if self.hist is None else [a + b for a, b in zip(self.hist, counts)]
        self._pending = []
        self._hist.zero_()

    def epoch_metrics(self, state: TrainState) -> dict:
        self._flush()
        if self.choice is None or len(self.rows) == self._logged:
            return {}
        self._logged = len(self.rows)
        return self.metrics()

    def metrics(self) -> dict:
        """Everything recorded so far, as W&B values (FIG1_KEYS)."""
        c, (qmin, qmax) = self.choice, self._levels
        return {"fig1/layer": c.layer, "fig1/rule": c.rule, "fig1/layer_share": c.share, "fig1/channel": c.channel,
                "fig1/weights": c.weights, "fig1/counts": c.counts, "fig1/levels": [qmin, qmax],
                "fig1/iterations": list(self.iterations), "fig1/w_over_s": [r[:-2] for r in self.rows],
                "fig1/weight_step": [r[-2] for r in self.rows], "fig1/act_step": [r[-1] for r in self.rows],
                "fig1/hist_edges": grid_edges(qmin, qmax).tolist(), "fig1/hist_counts": list(self.hist)}

    def state_dict(self) -> dict:
        self._flush()  # checkpoints are written at epoch ends, after epoch_metrics: nothing is pending
        return {"choice": None if self.choice is None else asdict(self.choice), "rows": self.rows,
                "iterations": self.iterations, "hist": self.hist, "logged": self._logged}

    def load_state_dict(self, state: dict) -> None:
        self.choice = None if state.get("choice") is None else TraceChoice(**state["choice"])
        self.rows, self.iterations = list(state.get("rows", [])), list(state.get("iterations", []))
        self.hist, self._logged = state.get("hist"), state.get("logged", 0)
        if self.choice is not None:
            self._start_recording()
