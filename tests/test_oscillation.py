"""Oscillation tracker (SPEC §4) on hand-written integer sequences."""
import pytest
import torch

from qat.oscillation import OscillationTracker

GRID = (-8, 7)  # signed 4-bit


def run(sequence, momentum=0.5):
    tracker = OscillationTracker(momentum)
    for codes in sequence:
        tracker.update(torch.as_tensor(codes, dtype=torch.float32), *GRID)
    return tracker


def test_counts_sign_flips_only():
    # weight 0: 0→1→0→1 : moves +,−,+ → 2 oscillations
    # weight 1: 0→1→2→3 : always + → 0
    # weight 2: 0→1→1→0 : +, (none), − → 1 (the flip is measured against the last NON-zero move)
    # weight 3: constant → 0
    t = run([[0, 0, 0, 5], [1, 1, 1, 5], [0, 2, 1, 5], [1, 3, 0, 5]])
    assert t.count.tolist() == [2, 0, 1, 0]


def test_frequency_is_the_ema_of_oscillations():
    m = 0.5
    t = run([[0, 0], [1, 0], [0, 0], [1, 0]], momentum=m)
    # weight 0 oscillates at updates 3 and 4: f = 0 → 0 (update 2) → m → m + (1-m)·m
    expected = m * 1 + (1 - m) * (m * 1 + (1 - m) * 0)
    assert t.frequency.tolist() == pytest.approx([expected, 0.0])


def test_int_ema_exists_from_its_start_and_tracks_codes():
    m = 0.25
    t = run([[0.0], [1.0]], momentum=m)
    assert t.int_ema is None, "no code EMA (and no memory for one) before start_code_ema"
    t.start_code_ema()
    t.update(torch.tensor([4.0]), *GRID)
    assert t.int_ema.dtype == torch.float32 and t.int_ema.item() == pytest.approx(m * 4.0)


def test_bias_corrected_frequency_means_the_same_at_every_budget():
    """SPEC §4: a weight oscillating every 50 iterations (rate 0.02) is above the 3-bit freeze threshold 0.011
    after 400 iterations once corrected by 1 − (1−m)^n; the plain EMA started at 0 (0.007) is not."""
    m = 0.001
    codes = [[float((t // 50) % 2)] for t in range(401)]
    t = run(codes, momentum=m)
    assert t.updates == 400 and int(t.count) == 7
    corrected = float(t.bias_corrected_frequency())
    assert corrected == pytest.approx(float(t.frequency) / (1 - (1 - m) ** 400))
    assert float(t.frequency) < 0.011 < corrected < 0.03
    assert t.fraction_oscillating(0.011) == 1.0


def test_code_ema_restarts_and_is_bias_corrected():
    m = 0.5
    t = run([[-3.0], [-3.0], [-3.0]], momentum=m)
    t.start_code_ema()
    assert float(t.code_ema()) == -3.0  # no update since the start: the current code
    for c in (2.0, 2.0, 3.0):
        t.update(torch.tensor([c]), *GRID)
    ema = ((0.5 * 2) * 0.5 + 0.5 * 2) * 0.5 + 0.5 * 3  # 2.25, from 0
    assert float(t.code_ema()) == pytest.approx(ema / (1 - 0.5 ** 3))


def test_shape_change_is_an_error():
    t = run([[0, 0]])
    with pytest.raises(ValueError):
        t.update(torch.zeros(3), *GRID)


def test_code_ema_needs_a_first_update():
    with pytest.raises(RuntimeError, match="first update"):
        OscillationTracker().start_code_ema()


def test_tracker_updates_only_on_training_forwards():
    from qat.freeze import attach_trackers
    from qat.modules import convert, quant_layers
    from qat.prepare.calibrate import calibrate_activations, init_weight_steps
    torch.manual_seed(0)
    model = convert(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)), 4,
                    quantize_first_last=True)
    init_weight_steps(model)
    calibrate_activations(model, [torch.randn(2, 3, 8, 8)])
    attach_trackers(model)
    layer = next(l for _, l in quant_layers(model))
    model.eval()
    model(torch.randn(2, 3, 8, 8))
    assert layer.weight_quant.tracker.previous is None, "eval forwards must not update the tracker"
    model.train()
    model(torch.randn(2, 3, 8, 8))
    assert layer.weight_quant.tracker.previous is not None


@pytest.mark.parametrize("ema_started", [False, True], ids=["before-onset", "after-onset"])
def test_checkpointed_tracker_continues_exactly_and_stores_narrow_integers(tmp_path, ema_started):
    from qat.freeze import FrozenCodes
    torch.manual_seed(0)
    sequence = [torch.randint(-4, 4, (64,)).float() for _ in range(8)]
    straight = run(sequence[:3], momentum=0.1)
    if ema_started:
        straight.start_code_ema()
    straight.update(sequence[3], *GRID)
    path = tmp_path / "tracker.pt"
    torch.save(straight.state_dict(), path)
    stored = torch.load(path)
    assert stored["code_direction"].dtype == torch.int8 and stored["count"].dtype == torch.int16
    assert stored["stored_previous"] is None and stored["stored_last_direction"] is None  # one byte holds both
    assert (stored["int_ema"] is not None) == ema_started
    resumed = OscillationTracker()
    resumed.load_state_dict(stored)
    for t, codes in enumerate(sequence[4:]):
        if t == 2 and not ema_started:  # the EMA starts after the resume
            straight.start_code_ema()
            resumed.start_code_ema()
        straight.update(codes, *GRID)
        resumed.update(codes, *GRID)
    for name in ("previous", "last_direction", "frequency", "count", "int_ema"):
        assert torch.equal(getattr(resumed, name), getattr(straight, name)), name
        assert getattr(resumed, name).dtype == getattr(straight, name).dtype, name
    assert resumed.updates == straight.updates == 7
    assert torch.equal(resumed.code_ema(), straight.code_ema())

    frozen = FrozenCodes(torch.zeros(4))
    frozen.freeze(torch.tensor([True, False, True, False]), torch.tensor([-300.0, 0.0, 7.0, 0.0]))
    assert frozen.state_dict()["codes"].dtype == torch.int16, "−300 needs 16 bits"
    reloaded = FrozenCodes(torch.zeros(4))
    reloaded.load_state_dict(frozen.state_dict())
    assert reloaded.codes.dtype == torch.float32 and torch.equal(reloaded.codes, frozen.codes)


def test_non_integer_codes_are_stored_unchanged():
    from qat.oscillation import stored_codes
    values = torch.tensor([0.5, 1.0])
    assert stored_codes(values) is values


def test_late_window_counts_oscillations_of_the_last_fifth_per_layer_kind():
    """`osc/late_fraction`: weights whose oscillations per iteration over the last 20 % of training exceed the
    final freeze threshold; a weight that oscillated only before the window does not count; depthwise apart."""
    from qat.freeze import OscillationTrackingHook
    from qat.hooks import TrainState
    from qat.modules import convert, low_bit_layers
    from qat.prepare.calibrate import calibrate_activations, init_weight_steps
    torch.manual_seed(0)
    model = convert(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 8, 3, groups=8)), 3, quantize_first_last=True)
    init_weight_steps(model)
    calibrate_activations(model, [torch.randn(2, 3, 8, 8)])
    layers = [layer for _, layer in low_bit_layers(model)]
    with torch.no_grad():
        for layer in layers:
            layer.weight.zero_()
    hook, state = OscillationTrackingHook(), TrainState(model, total_iterations=100)
    hook.on_train_start(state)
    x = torch.randn(1, 3, 8, 8)
    for t in range(100):
        with torch.no_grad():  # element 0 oscillates every iteration in the last 20; element 1 only before
            for layer in layers:
                s = layer.weight_quant.step
                layer.weight.view(-1)[0] = s * (t % 2) if t >= 80 else 0.0
                layer.weight.view(-1)[1] = s * (t % 2) if t < 60 else 0.0
        model(x)
        state.iteration += 1
        hook.after_optimizer_step(state)
    metrics = hook.epoch_metrics(state)
    sizes = [layer.weight.numel() for layer in layers]
    assert metrics["osc/late_iterations"] == 20
    assert metrics["osc/late_fraction_other"] == pytest.approx(1 / sizes[0])
    assert metrics["osc/late_fraction_depthwise"] == pytest.approx(1 / sizes[1])
    assert metrics["osc/late_fraction"] == pytest.approx(2 / sum(sizes))
    resumed = OscillationTrackingHook()
    resumed.model = model
    resumed.load_state_dict(hook.state_dict())
    assert resumed.epoch_metrics(state)["osc/late_fraction"] == metrics["osc/late_fraction"]


def test_codes_are_held_in_the_grids_narrowest_integer_dtype():
    """`previous` takes its dtype from the grid, not from the values seen: int8 for every signed grid up to 8 bits,
    int16 for 0..255; integer codes given in that very dtype are copied, and their differences cannot overflow."""
    from qat.oscillation import code_dtype
    assert [code_dtype(*g) for g in [(-2, 1), (-8, 7), (-128, 127), (0, 255), (-32768, 32767), (0, 65535)]] == \
        [torch.int8, torch.int8, torch.int8, torch.int16, torch.int16, torch.int32]
    for grid, dtype in (((-128, 127), torch.int8), ((0, 255), torch.int16)):
        t = OscillationTracker(0.5)
        first = torch.tensor([0, grid[0], grid[1]], dtype=dtype)
        t.update(first, *grid)
        assert t.previous.dtype == dtype and t.previous.data_ptr() != first.data_ptr()
        for codes in ([grid[1], grid[1], grid[0]], [grid[0], grid[1], grid[0]]):  # full-range jumps both ways
            t.update(torch.tensor(codes, dtype=dtype), *grid)
        assert t.count.tolist() == [1, 0, 0] and t.last_direction.tolist() == [-1, 1, -1]
        assert torch.equal(first, torch.tensor([0, grid[0], grid[1]], dtype=dtype)), "the caller's codes untouched"


def test_a_checkpoint_of_the_two_field_layout_resumes_exactly():
    # Runs killed before the packed layout kept `previous` and `last_direction` apart: they resume from them.
    torch.manual_seed(1)
    sequence = [torch.randint(-4, 4, (64,)).float() for _ in range(6)]
    packed = run(sequence[:3], momentum=0.1)
    old = {k: v for k, v in packed.state_dict().items() if k not in ("code_direction", "stored_previous",
                                                                     "stored_last_direction")}
    old.update(previous=packed.previous.clone(), last_direction=packed.last_direction.clone())
    resumed = OscillationTracker()
    resumed.load_state_dict(old)
    assert resumed.code_direction is None
    for codes in sequence[3:]:
        packed.update(codes, *GRID)
        resumed.update(codes, *GRID)
    for name in ("previous", "last_direction", "frequency", "count"):
        assert torch.equal(getattr(resumed, name), getattr(packed, name)), name
    with pytest.raises(KeyError, match="unknown field"):
        OscillationTracker().load_state_dict({"prev": torch.zeros(1)})
