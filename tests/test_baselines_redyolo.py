"""RedYolo (SPEC §7): the EMA ramp and the EMA evaluation copy; QC starts as the identity and trains
only its own parameters."""
import copy
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_baselines_helpers import ToyTask, eager_quantizer, snapshot, tiny_cnn  # noqa: E402,F401

from qat.baselines.redyolo import (EMAHook, QuantizationCorrectionStep, attach_qc, ema_decay,  # noqa: E402
                                   has_qc)
from qat.freeze import OscillationTrackingHook  # noqa: E402
from qat.hooks import TrainState  # noqa: E402
from qat.modules import quant_layers  # noqa: E402
from qat.recipes import MethodConfig, get_recipe, make_hooks, make_post_steps  # noqa: E402


def test_decay_ramp():
    assert ema_decay(0) == 0.0
    assert ema_decay(1) == pytest.approx(0.9999 * (1 - math.exp(-1 / 2000)))
    assert ema_decay(2000) == pytest.approx(0.9999 * (1 - math.exp(-1)))
    assert ema_decay(100_000) == pytest.approx(0.9999, abs=1e-12)
    assert ema_decay(10, decay=0.5, ramp=5) == pytest.approx(0.5 * (1 - math.exp(-2)))


def _train_step(model, k):
    """A stand-in for an optimizer step: deterministic changes to weights, biases and both steps."""
    with torch.no_grad():
        for i, (_, layer) in enumerate(quant_layers(model)):
            layer.weight.add_(0.01 * (k + i))
            layer.bias.mul_(0.9)
            layer.weight_quant.step.mul_(1.0 + 0.01 * k)
            layer.input_quant.step.add_(0.001 * k)


def test_ema_follows_the_hand_recursion_for_weights_biases_and_both_steps():
    model = tiny_cnn()
    hook = EMAHook(decay=0.9, ramp=3.0)
    hook.on_train_start(TrainState(model=model, total_iterations=10))
    ema_model = hook.eval_model()
    assert ema_model is not model
    tensors = lambda m: {n: t.detach().clone() for n, t in list(m.named_parameters())}  # noqa: E731
    expected = tensors(model)
    for u in range(1, 6):
        _train_step(model, u)
        hook.after_optimizer_step(TrainState(model=model, iteration=u - 1, total_iterations=10))
        d = 0.9 * (1 - math.exp(-u / 3.0))
        live = tensors(model)
        expected = {n: d * expected[n] + (1 - d) * live[n] for n in expected}
    got = dict(hook.ema.named_parameters())
    for name in ("0.weight", "0.bias", "0.weight_quant.step", "0.input_quant.step", "8.weight_quant.step"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(got["0.weight"], model[0].weight)   # averaged, not copied
    assert hook.updates == 5


def test_first_update_almost_copies_and_non_float_buffers_are_copied():
    model = tiny_cnn()
    hook = EMAHook()                     # 0.9999, ramp 2000: d(1) ≈ 5e-4
    hook.on_train_start(TrainState(model=model))
    _train_step(model, 3)
    model[2].input_quant.observed_batches.fill_(7)   # an integer buffer
    hook.update()
    d = ema_decay(1)
    assert d < 1e-3
    ema = hook.eval_model()
    assert int(ema[2].input_quant.observed_batches) == 7
    scale = float(model[2].weight.detach().abs().max())
    torch.testing.assert_close(ema[2].weight, model[2].weight, rtol=0, atol=1e-3 * scale)


def test_eval_copy_has_no_tracker_side_effects_and_evaluates_ema_weights():
    model = tiny_cnn()
    tracking = OscillationTrackingHook(momentum=0.5)
    state = TrainState(model=model)
    tracking.on_train_start(state)
    hook = EMAHook(decay=0.5, ramp=1e-9)       # d = 0.5 from the first update
    hook.on_train_start(state)
    x = torch.randn(4, 3, 8, 8)
    model.train()
    model(x)                                    # tracker initialised on the live model
    tracker = model[2].weight_quant.tracker
    before = tracker.previous.clone()
    ema = hook.eval_model()
    assert all(layer.weight_quant.tracker is None for _, layer in quant_layers(ema))
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())
    _train_step(model, 50)
    hook.update()
    ref = copy.deepcopy(model)                  # a model holding the EMA tensors, built by hand
    with torch.no_grad():
        for (n, p) in ref.named_parameters():
            p.copy_(dict(hook.ema.named_parameters())[n])
    ref.eval()
    torch.testing.assert_close(hook.eval_model()(x), ref(x))
    assert not torch.allclose(hook.eval_model()(x), model.eval()(x))
    assert torch.equal(tracker.previous, before)   # the live tracker saw nothing of the EMA evaluations


def test_state_round_trip_and_copy_to():
    model = tiny_cnn()
    hook = EMAHook(decay=0.9, ramp=2.0)
    hook.on_train_start(TrainState(model=model))
    for u in range(3):
        _train_step(model, u + 1)
        hook.update()
    state = copy.deepcopy(hook.state_dict())
    resumed = EMAHook(decay=0.9, ramp=2.0)
    resumed.load_state_dict(state)              # before on_train_start: applied when the copy exists
    resumed.on_train_start(TrainState(model=model))
    assert resumed.updates == 3
    for k, v in hook.ema_state().items():
        if torch.is_tensor(v):
            assert torch.equal(resumed.ema_state()[k], v)
    hook.copy_to(model)
    for n, p in model.named_parameters():
        assert torch.equal(p, dict(hook.ema.named_parameters())[n])


def test_qc_starts_as_identity_and_is_part_of_the_model():
    model = tiny_cnn().eval()
    x = torch.randn(4, 3, 8, 8)
    ref = model(x)
    qcs = attach_qc(model)
    assert len(qcs) == 3                                        # the three convs, not the linear
    assert torch.equal(model(x), ref)
    assert attach_qc(model) == qcs                              # idempotent: no second hook
    with torch.no_grad():
        model[4].qc.gamma[1] = 2.0
        model[4].qc.beta[3] = 0.5
    changed = model(x)
    assert not torch.allclose(changed, ref)
    sd = model.state_dict()
    assert has_qc(sd) and "4.qc.gamma" in sd
    fresh = tiny_cnn().eval()
    attach_qc(fresh)
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh(x), changed)
    torch.testing.assert_close(copy.deepcopy(model)(x), changed)


def test_qc_affine_multiplies_conv_output_per_channel():
    model = tiny_cnn().eval()
    conv = model[0]
    x = torch.randn(2, 3, 8, 8)
    plain = conv(x)
    attach_qc(model)
    with torch.no_grad():
        conv.qc.gamma.copy_(torch.arange(8.0))
        conv.qc.beta.fill_(-1.0)
    torch.testing.assert_close(conv(x), plain * torch.arange(8.0).view(1, 8, 1, 1) - 1.0)


def test_qc_trains_only_its_own_parameters():
    model = tiny_cnn()
    task = ToyTask()
    before = snapshot(model)
    out = QuantizationCorrectionStep(epochs=1, lr=1e-2).run(model, task)
    assert out["qc/iterations"] == len(task.calib) == task.loss_calls
    after = snapshot(model)
    qc_keys = {k for k in after if ".qc." in k}
    assert qc_keys and set(after) - qc_keys == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    identity = {k: torch.ones_like(after[k]) if k.endswith("gamma") else torch.zeros_like(after[k]) for k in qc_keys}
    assert any(not torch.equal(after[k], identity[k]) for k in qc_keys)
    assert all(p.requires_grad for p in model.parameters())
    assert "qc/metric" in out and out["qc/loss_last"] < out["qc/loss_first"]


def test_qc_fractional_epochs_and_recipe_wiring():
    task = ToyTask()
    out = QuantizationCorrectionStep(epochs=0.5).run(tiny_cnn(), task)
    assert out["qc/iterations"] == 2
    cfg = MethodConfig(ema_decay=0.99, ema_ramp=10, qc_epochs=0.5, qc_lr=3e-3)
    recipe = get_recipe("redyolo")
    ema = [h for h in make_hooks(recipe, 4, 0, cfg) if isinstance(h, EMAHook)]
    assert len(ema) == 1 and (ema[0].decay, ema[0].ramp) == (0.99, 10)
    (qc,) = make_post_steps(recipe, cfg)
    assert isinstance(qc, QuantizationCorrectionStep) and (qc.epochs, qc.lr) == (0.5, 3e-3)
