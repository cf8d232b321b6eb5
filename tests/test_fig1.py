"""Fig. 1: the trackers choose the traced layer and weights, the training hook records them over the last
iterations, and analysis/fig1.py draws (a) histogram, (b) traces, (c) step sizes with boundaries, legend and a title
naming model, preset, bits and recipe, LSQ beside ours."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from test_baselines_helpers import IMG, ToyTask, eager_quantizer, tiny_cnn  # noqa: E402,F401

from qat.freeze import OscillationTrackingHook, attach_trackers  # noqa: E402
from qat.hooks import TrainState  # noqa: E402
from qat.logging.fig1_traces import FIG1_KEYS, Fig1TraceHook, choose_traced_weights, trace_window  # noqa: E402
from qat.loop import qat_step  # noqa: E402
from qat.modules import quant_layers, step_parameters  # noqa: E402
from qat.oscillation import OscillationTracker  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def track(layer, oscillating: dict[int, int], momentum: float = 0.1) -> None:
    """Give `layer` a tracker whose weights at the flat indices in `oscillating` flip between two codes that many
    times (through the tracker's own update, so the test holds whatever its internals)."""
    layer.weight_quant.tracker = tracker = OscillationTracker(momentum)
    codes, grid = torch.zeros_like(layer.weight), (layer.weight_quant.qmin, layer.weight_quant.qmax)
    tracker.update(codes, *grid)
    for t in range(1, 2 + max(oscillating.values(), default=0)):
        for index, times in oscillating.items():
            if t <= times + 1:
                codes.view(-1)[index] = t % 2
        tracker.update(codes.clone(), *grid)


def test_choice_is_the_layer_channel_and_weights_that_oscillate_most():
    model = tiny_cnn(bits=3)
    layers = list(quant_layers(model))
    (_, first), (_, second), (third_name, third), (_, last) = layers
    per = third.weight[0].numel()  # weights per output channel of the 3rd layer (8 × 3 × 3)
    track(first, {0: 6})                                                   # one weight: a small share
    track(second, {})
    track(third, {5 * per + 3: 9, 5 * per + 7: 12, 5 * per + 1: 9,        # channel 5: most oscillations
                  2 * per + 0: 15, **{i: 6 for i in range(9 * per, 9 * per + 10)}})  # many weights: highest share
    track(last, {})
    choice = choose_traced_weights(layers, k=3)
    assert choice.rule == "tracker"
    assert choice.layer == third_name                     # the highest share of oscillating weights
    assert choice.share == pytest.approx(third.weight_quant.tracker.fraction_oscillating(0.005))
    assert choice.channel == 9                            # oscillations per channel: 10 × 6 > 9 + 12 + 9 > 15
    assert all(w // per == 9 for w in choice.weights)
    assert choice.counts == [6, 6, 6]

    track(first, {})                                      # now the 3rd layer alone oscillates
    track(third, {5 * per + 3: 9, 5 * per + 7: 12, 5 * per + 1: 9, 2 * per: 15})
    choice = choose_traced_weights(layers, k=4)
    assert choice.layer == third_name and choice.channel == 5  # 30 oscillations in channel 5, 15 in channel 2
    assert choice.weights[0] == 5 * per + 7 and set(choice.weights[1:3]) == {5 * per + 1, 5 * per + 3}  # by count
    assert choice.counts == [12, 9, 9, 0]


def test_equal_counts_go_to_the_weight_nearer_a_boundary_and_the_fallback_is_documented():
    model = tiny_cnn(bits=3)
    layers = list(quant_layers(model))
    name, second = layers[1]
    with torch.no_grad():
        s = float(second.weight_quant.step)
        second.weight.zero_()
        second.weight.view(-1)[[0, 1, 2, 3]] = torch.tensor([0.1, 0.45, -1.4, 9.5]) * s  # 9.5: beyond the grid
    choice = choose_traced_weights(layers, k=3)           # no tracker: the fallback
    assert choice.rule.startswith("fallback") and choice.layer == name and choice.channel == 0
    assert choice.weights == [1, 2, 0]                    # nearest a boundary first; the clipped weight last
    for _, layer in layers:
        track(layer, {})                                  # trackers that counted nothing: still the fallback
    assert choose_traced_weights(layers, k=3).rule.startswith("fallback")
    track(second, {2: 4, 1: 4, 0: 4})
    assert choose_traced_weights(layers, k=3).weights == [1, 2, 0]  # equal counts: |w/s − round(w/s)| decides


def train(model, hooks, iterations: int, total: int = 16, state=None, epoch_every: int = 4):
    """QAT steps on random data up to `iterations` of `total`; every `epoch_every` steps the epoch end's metrics,
    as the trainers log them."""
    g = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # a large lr: weights cross boundaries in few steps
    if state is None:
        state = TrainState(model=model, total_iterations=total)
        for h in hooks:
            h.on_train_start(state)
    logged = []
    while state.iteration < iterations:
        x = torch.randn(16, 3, IMG, IMG, generator=g)
        y = torch.randint(0, 4, (16,), generator=g)
        qat_step(F.cross_entropy(model(x), y), optimizer, hooks, state, step_parameters(model))
        if state.iteration % epoch_every == 0:
            metrics = {}
            for h in hooks:
                metrics.update(h.epoch_metrics(state))
            logged.append((state.iteration, metrics))
    return state, logged


def test_hook_records_the_last_iterations_flushed_at_epoch_ends_and_carried_by_its_state():
    assert trace_window(40, 200) == 20 and trace_window(1000, 200) == 200 and trace_window(1, 200) == 1
    model = tiny_cnn(bits=3)
    trace = Fig1TraceHook(fig1_iterations=6, k=4)
    state, logged = train(model, [OscillationTrackingHook(momentum=0.1), trace], iterations=16)
    assert trace.window_start == 10
    rows = [(it, m) for it, m in logged if "fig1/layer" in m]
    assert [it for it, _ in rows] == [12, 16]             # epoch ends with new rows; the first epochs recorded none
    last = rows[-1][1]
    assert {k for k in last if k.startswith("fig1/")} == set(FIG1_KEYS)
    assert last["fig1/iterations"] == list(range(11, 17))
    assert rows[0][1]["fig1/iterations"] == [11, 12]      # flushed at the epoch end
    assert len(last["fig1/w_over_s"]) == 6 and all(len(r) == len(last["fig1/weights"]) == 4
                                                   for r in last["fig1/w_over_s"])
    layer = dict(quant_layers(model))[last["fig1/layer"]]
    v = (layer.weight / layer.weight_quant.step).detach().flatten()
    assert last["fig1/w_over_s"][-1] == pytest.approx(v[last["fig1/weights"]].tolist(), rel=1e-5)
    assert last["fig1/weight_step"][-1] == pytest.approx(float(layer.weight_quant.step.detach()))
    assert last["fig1/act_step"][-1] == pytest.approx(float(layer.input_quant.step.detach()))
    assert sum(last["fig1/hist_counts"]) == 6 * layer.weight.numel()  # every weight, every iteration
    assert last["fig1/levels"] == [layer.weight_quant.qmin, layer.weight_quant.qmax]
    assert trace.epoch_metrics(state) == {}               # nothing new: nothing logged again (the trainers' finish)

    # A run resumed (or branched, as ours from scalegrad at τ) from the state at iteration 12 records the same.
    model2 = tiny_cnn(bits=3)
    hooks2 = [OscillationTrackingHook(momentum=0.1), Fig1TraceHook(fig1_iterations=6, k=4)]
    state2, _ = train(model2, hooks2, iterations=12)
    saved = [h.state_dict() for h in hooks2]
    model3 = tiny_cnn(bits=3)
    model3.load_state_dict(model2.state_dict())
    hooks3 = [OscillationTrackingHook(momentum=0.1), Fig1TraceHook(fig1_iterations=6, k=4)]
    state3 = TrainState(model=model3, total_iterations=16)
    for h, s in zip(hooks3, saved):
        h.on_train_start(state3)
        h.load_state_dict(s)
    state3.iteration = 12
    _, logged3 = train(model3, hooks3, iterations=16, state=state3)
    resumed = logged3[-1][1]
    assert resumed["fig1/iterations"] == last["fig1/iterations"]
    assert resumed["fig1/layer"] == hooks2[1].choice.layer
    assert len(resumed["fig1/w_over_s"]) == 6


# ------------------------------------------------------------------------------------------------------------ figure
def fake_record(rule="tracker") -> dict:
    """A `fig1/*` record as the hook logs it: 3-bit grid [-4, 3], 3 weights over 30 iterations, one crossing
    the boundary 0.5 back and forth."""
    its = list(range(71, 101))
    w = [[0.5 + (0.02 if i % 2 else -0.02), -1.3 + 0.001 * i, 2.2] for i in range(30)]
    edges = [-4.5 + 0.1 * i for i in range(81)]
    return {"fig1/layer": "blocks.1.conv", "fig1/rule": rule, "fig1/layer_share": 0.12, "fig1/channel": 3,
            "fig1/weights": [30, 31, 35], "fig1/counts": [14, 3, 0], "fig1/levels": [-4, 3],
            "fig1/iterations": its, "fig1/w_over_s": w, "fig1/weight_step": [0.1 + 1e-4 * (i % 3) for i in range(30)],
            "fig1/act_step": [0.8 - 1e-3 * (i % 2) for i in range(30)], "fig1/hist_edges": edges,
            "fig1/hist_counts": [i % 7 for i in range(80)]}


def write_run(root: Path, recipe: str, record: dict | None, config: dict) -> Path:
    """A finished W&B run in `root/<name>` holding `record` in its history row at step 100."""
    from qat.logging import RunLogger, run_tags
    name = f"table5/mobilenetv2/{recipe}/w3a3/s0"
    lg = RunLogger(root / name, name=name, group="table5", tags=run_tags("mobilenetv2", recipe, 3), config=config)
    lg.log({"train/loss": 1.0}, step=50)
    lg.log(record or {"fig1/w2_ch0/0": 0.3}, step=100)
    lg.finish()
    return root / name


@pytest.fixture
def fig1_module():
    sys.path.insert(0, str(REPO / "analysis"))
    import fig1
    yield fig1
    sys.path.remove(str(REPO / "analysis"))


def test_figure_draws_lsq_beside_ours_with_boundaries_legend_and_a_named_title(tmp_path, fig1_module, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    monkeypatch.setenv("WANDB_MODE", "offline")
    lsq = write_run(tmp_path, "lsq", fake_record(), {"preset": "smoke", "model": "mobilenetv2"})
    ours = write_run(tmp_path, "scalegrad+ead+afw", fake_record(), {"detection_config": {"preset": "smoke"}})
    runs = [fig1_module.load_run(p) for p in (lsq, ours)]
    fig = fig1_module.draw(runs)
    title = fig._suptitle.get_text()
    assert "mobilenetv2" in title and "smoke" in title and "W3A3" in title and "table5/" not in title
    columns = [[ax for ax in fig.axes if ax.get_subplotspec().colspan.start == col] for col in (0, 1)]
    for recipe, axes in zip(("LSQ", "ours"), columns):
        hist, traces, zoom, weight_step, act_step = sorted(axes, key=lambda a: a.get_subplotspec().rowspan.start)
        assert recipe in hist.get_title()
        assert "(a)" in hist.get_title() and "(b)" in traces.get_title() and "(c)" in weight_step.get_title()
        boundaries = [line for line in hist.get_lines() if line.get_gid() == "boundary"]
        assert sorted(line.get_xdata()[0] for line in boundaries) == [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5]
        drawn = [line for line in traces.get_lines() if line.get_gid() is None and line.get_linestyle() == "-"]
        assert len(drawn) == 3 and len({line.get_color() for line in drawn}) == 3  # a colour per weight
        assert len([line for line in traces.get_lines() if line.get_gid() == "boundary"]) >= 2
        assert [line for line in traces.get_lines() if line.get_gid() == "level"]
        legend = [t.get_text() for t in traces.get_legend().get_texts()]
        assert len(legend) == 5 and "bin boundary" in legend and "quantization level" in legend
        assert legend[0].startswith("w[30]") and "14 osc." in legend[0]
        assert "1 weights near a boundary (1 changed code)" in zoom.get_title()  # the one crossing 0.5, zoomed
        assert [line for line in zoom.get_lines() if line.get_gid() == "boundary"]
        # (c): weight and activation steps on axes of their own, so neither hides the other
        assert len(weight_step.get_lines()) == len(act_step.get_lines()) == 1
        assert weight_step is not act_step and weight_step.get_ylim() != act_step.get_ylim()


def test_figure_command_writes_png_and_refuses_runs_without_traces(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.setenv("WANDB_MODE", "offline")
    lsq = write_run(tmp_path / "a", "lsq", fake_record("fallback: no oscillation counted yet"), {"preset": "proxy"})
    out = tmp_path / "fig" / "fig1"
    proc = subprocess.run([sys.executable, "analysis/fig1.py", "--run", str(lsq), "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".pdf").stat().st_size > 0
    old = write_run(tmp_path / "b", "lsq", None, {"preset": "proxy"})  # the fixed-layer keys of before
    proc = subprocess.run([sys.executable, "analysis/fig1.py", "--run", str(old), "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: run table5/mobilenetv2/lsq/w3a3/s0 ({old}) logged no Fig. 1 traces (fig1/w_over_s); it has the old "
        f"fixed-layer traces (fig1/w2_ch0/*): retrain it"]


def test_figure_of_a_diverged_run_stops_its_axis_at_the_grid(tmp_path, fig1_module, monkeypatch):
    """A run whose step collapsed (w/s ~ 1e7) drew one line per level up to 1e7: the figure never finished."""
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    monkeypatch.setenv("WANDB_MODE", "offline")
    record = fake_record()
    record["fig1/w_over_s"] = [[-2.5e7 + i, 1.5e7, 0.3] for i in range(30)]
    run = fig1_module.load_run(write_run(tmp_path, "scalegrad+ead+afw", record, {"preset": "smoke"}))
    traces = sorted(fig1_module.draw([run]).axes, key=lambda a: a.get_subplotspec().rowspan.start)[1]
    assert len([line for line in traces.get_lines() if line.get_gid() == "boundary"]) <= 2 * 8
    assert traces.get_ylim()[0] >= -8.1 and traces.get_ylim()[1] <= 8.1
