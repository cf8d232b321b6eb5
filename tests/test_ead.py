"""EAD (SPEC §3): the distance-aware EMA of weights and the μ schedule of step sizes, by hand."""
import pytest
import torch

from qat.ead import EADHook, ead_alpha, ead_mu
from qat.hooks import TrainState
from qat.modules import convert, quant_layers


def test_alpha_is_k_times_distance_clamped():
    s = torch.tensor(0.5)
    w = torch.tensor([0.0, 0.1, 0.25, 0.2499, 1.0])       # v = 0, 0.2, 0.5, 0.4998, 2
    alpha = ead_alpha(w, s, k=1.5, alpha_max=0.6)
    assert alpha.tolist() == pytest.approx([0.0, 0.3, 0.6, 0.6, 0.0], abs=1e-4)


def test_mu_decays_linearly_to_zero():
    assert ead_mu(100, 100, 200, 0.1) == pytest.approx(0.1)
    assert ead_mu(150, 100, 200, 0.1) == pytest.approx(0.05)
    assert ead_mu(200, 100, 200, 0.1) == pytest.approx(0.0)


def _model():
    torch.manual_seed(0)
    model = convert(torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1)), 4,
                    quantize_first_last=True)
    for _, layer in quant_layers(model):
        layer.weight_quant.step.data.fill_(0.1)
        layer.input_quant.step.data.fill_(0.2)
    return model


def test_hook_applies_eq_11_and_12_after_tau_only():
    model = _model()
    hook = EADHook(tau=10, k=1.0, alpha_max=0.99, mu_init=0.1)
    state = TrainState(model=model, iteration=5, total_iterations=20)
    layer = next(l for _, l in quant_layers(model))

    def fake_step(delta_w, delta_s):
        hook.before_optimizer_step(state)
        w_prev, s_prev = layer.weight.detach().clone(), layer.weight_quant.step.detach().clone()
        with torch.no_grad():
            layer.weight.add_(delta_w)
            layer.weight_quant.step.add_(delta_s)
        w_new, s_new = layer.weight.detach().clone(), layer.weight_quant.step.detach().clone()
        hook.after_optimizer_step(state)
        return w_prev, w_new, s_prev, s_new

    # before τ: no change to the optimizer's update
    _, w_new, _, s_new = fake_step(0.033, 0.01)
    assert torch.equal(layer.weight.detach(), w_new) and torch.equal(layer.weight_quant.step.detach(), s_new)

    state.iteration = 14  # this update is t = 15 > τ
    w_prev, w_new, s_prev, s_new = fake_step(0.033, 0.01)
    v = w_new / s_new
    alpha = torch.clamp((v - torch.round(v)).abs(), 0, 0.99)
    torch.testing.assert_close(layer.weight.detach(), alpha * w_prev + (1 - alpha) * w_new)
    mu = (1 - (15 - 10) / (20 - 10)) * 0.1
    torch.testing.assert_close(layer.weight_quant.step.detach(), (1 - mu) * s_prev + mu * s_new)


def test_hook_counts_the_codes_its_update_changed():
    """Did EAD act? (issue 17): the codes after EAD's update that differ from the optimizer's, summed since τ."""
    model = _model()
    hook = EADHook(tau=0, k=1.0, alpha_max=0.99, mu_init=0.0)  # μ = 0: the steps keep their old value
    state = TrainState(model=model, iteration=3, total_iterations=20)
    layer = next(l for _, l in quant_layers(model))
    with torch.no_grad():
        layer.weight.fill_(0.04)                     # v = 0.4: code 0
    hook.before_optimizer_step(state)
    with torch.no_grad():
        layer.weight.fill_(0.07)                     # the optimizer's step: v = 0.7, code 1, Δ = 0.3
    hook.after_optimizer_step(state)
    # EAD: w = 0.3·0.04 + 0.7·0.07 = 0.061 → v = 0.61, still code 1: nothing changed yet
    assert hook.epoch_metrics(TrainState(model, iteration=4))["ead/changed_codes"] == 0
    with torch.no_grad():
        layer.weight.fill_(0.04)
    hook.before_optimizer_step(state)
    with torch.no_grad():
        layer.weight.fill_(0.055)                    # v = 0.55, code 1, Δ = 0.45 → α = 0.45
    hook.after_optimizer_step(state)
    # EAD: w = 0.45·0.04 + 0.55·0.055 = 0.04825 → v = 0.4825, code 0: every weight of the layer changed code
    metrics = hook.epoch_metrics(TrainState(model, iteration=5))
    assert metrics["ead/changed_codes"] == layer.weight.numel()
    fresh = EADHook(tau=0)
    fresh.load_state_dict(hook.state_dict())
    assert int(fresh.changed_codes) == layer.weight.numel()
