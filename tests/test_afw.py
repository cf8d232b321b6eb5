"""AFW (SPEC §6): g(θ), R(g), θ only on frozen weights, hard rounding; and freezing (§5)."""
import itertools

import pytest
import torch

from qat.afw import AFWStep, afw_offset, afw_regularizer, attach_afw, finalize_afw
from qat.freeze import FreezeHook, FrozenCodes, freeze_threshold
from qat.hooks import TrainState
from qat.modules import convert, quant_layers
from qat.prepare.calibrate import calibrate_activations, init_weight_steps


def test_offset_is_clipped_scaled_tanh():
    theta = torch.tensor([0.0, 0.1, 5.0, -5.0])
    g = afw_offset(theta, gamma=1.1)
    assert g.tolist() == pytest.approx([0.0, 1.1 * torch.tanh(torch.tensor(0.1)).item(), 1.0, -1.0])


def test_regularizer_vanishes_on_integers_only():
    g = torch.tensor([-1.0, 0.0, 1.0, 0.5, -0.3])
    r = afw_regularizer(g)
    assert r[:3].tolist() == [0.0, 0.0, 0.0]
    assert r[3].item() == pytest.approx(0.25 * 0.75 ** 2)
    assert r[4].item() == pytest.approx(0.09 * 0.91 ** 2)


def _quantized_net(bits=3):
    torch.manual_seed(0)
    model = convert(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)),
                    bits, quantize_first_last=True)
    init_weight_steps(model)
    calibrate_activations(model, [torch.randn(8, 3, 8, 8)])
    return model


def _freeze_some(model, fraction=0.3):
    for _, layer in quant_layers(model):
        wq = layer.weight_quant
        wq.frozen = FrozenCodes(layer.weight.detach())
        mask = torch.rand(layer.weight.shape) < fraction
        wq.frozen.freeze(mask, wq.codes(layer.weight))


def test_frozen_weights_get_no_task_gradient_and_keep_their_code():
    model = _quantized_net()
    _freeze_some(model)
    loss = model(torch.randn(4, 3, 8, 8)).square().sum()
    loss.backward()
    for _, layer in quant_layers(model):
        mask = layer.weight_quant.frozen.mask
        assert mask.any()
        assert (layer.weight.grad[mask] == 0).all()
        # move the latent weights far: frozen codes stay
        with torch.no_grad():
            layer.weight.add_(torch.randn_like(layer.weight))
        w_hat = layer.weight_quant(layer.weight)
        codes = torch.round(w_hat / layer.weight_quant.step)
        assert torch.equal(codes[mask], layer.weight_quant.frozen.codes[mask])


def test_freeze_threshold_schedule():
    assert freeze_threshold(0.1, 4) is None
    assert freeze_threshold(0.25, 4) == pytest.approx(0.1)
    assert freeze_threshold(1.0, 4) == pytest.approx(0.01)
    assert freeze_threshold(1.0, 3) == pytest.approx(0.011)


def test_freeze_hook_freezes_oscillating_weights_at_rounded_ema():
    model = _quantized_net()
    hook = FreezeHook(bits=3, momentum=0.5)
    state = TrainState(model=model, iteration=90, total_iterations=100)
    hook.on_train_start(state)
    layer = next(l for _, l in quant_layers(model))
    step = layer.weight_quant.step.detach()
    base = layer.weight_quant.codes(layer.weight)
    # weight [0,0,0,0] flips between codes c and c+1 every step: frequency rises above the threshold
    for i in range(6):
        with torch.no_grad():
            layer.weight[0, 0, 0, 0] = step * (base[0, 0, 0, 0] + (i % 2) - 0.3)
        model.train()
        model(torch.randn(2, 3, 8, 8))
        hook.after_optimizer_step(state)
    frozen = layer.weight_quant.frozen
    assert frozen.mask[0, 0, 0, 0]
    # frozen at round(EMA of its codes): one of the two levels it flipped between
    assert frozen.codes[0, 0, 0, 0].item() in (base[0, 0, 0, 0].item(), base[0, 0, 0, 0].item() + 1)
    assert frozen.mask.sum() < frozen.mask.numel() // 2, "non-oscillating weights stay free"


class _RandomTask:
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g))
                        for _ in range(4)]

    def iterations_for(self, epochs):
        return int(epochs * len(self.batches))

    def train_batches(self, epochs=1):
        for _ in range(epochs):
            yield from self.batches

    def loss(self, model, batch):
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])

    def evaluate(self, model):
        with torch.no_grad():
            return {"metric": -float(sum(self.loss(model, b) for b in self.batches))}

    def log(self, *a, **k):
        pass


def test_afw_learns_theta_only_for_frozen_weights_and_hard_rounds():
    model = _quantized_net()
    _freeze_some(model, 0.2)
    before = {n: (l.weight.detach().clone(), l.weight_quant.codes(l.weight)) for n, l in quant_layers(model)}
    steps_before = [p.detach().clone() for n, p in model.named_parameters() if n.endswith("step")]
    thetas = attach_afw(model)
    assert sum(t.numel() for t in thetas) == sum(int(l.weight_quant.frozen.mask.sum()) for _, l in quant_layers(model))
    with torch.no_grad():
        for t in thetas:
            t.uniform_(-2, 2)   # pretend training moved θ
    changed = finalize_afw(model)
    assert changed > 0
    for name, layer in quant_layers(model):
        mask = layer.weight_quant.frozen.mask
        codes = layer.weight_quant.codes(layer.weight)
        old_codes = before[name][1]
        frozen_old = layer.weight_quant.frozen.codes  # updated to the new codes
        assert torch.equal(codes[~mask], old_codes[~mask]), "non-frozen weights keep their codes"
        assert ((codes[mask] - old_codes[mask]).abs() <= 1).all(), "offsets are in {-1, 0, 1}"
        assert torch.equal(codes[mask], frozen_old[mask])
        assert layer.weight_quant.afw is None
    for a, b in zip(steps_before, [p for n, p in model.named_parameters() if n.endswith("step")]):
        assert torch.equal(a, b), "AFW keeps step sizes fixed"


def test_afw_step_runs_and_reports_after_hard_rounding():
    model = _quantized_net()
    _freeze_some(model, 0.2)
    metrics = AFWStep(epochs=1, lr=0.1).run(model, _RandomTask())
    assert metrics["afw/weights"] > 0 and "afw/metric" in metrics
    assert all(p.requires_grad for p in model.parameters())


# The readings SPEC §6 leaves open (qat/afw.py): the task loss against λ, θ's initialisation, R's reduction.

def _frozen_toy(seed=0):
    from test_baselines_helpers import ToyTask, tiny_cnn
    model = tiny_cnn(bits=3, seed=seed)
    torch.manual_seed(seed)
    _freeze_some(model, fraction=0.3)
    return model, ToyTask(n_train=1)


def _theta_step(monkeypatch, loss_reduction):
    """θ after AFWStep's one plain SGD step (lr 1, no momentum, λ = 0) from θ = 0, per layer."""
    import qat.afw as afw_module
    model, task = _frozen_toy()
    thetas = []

    def attach_and_keep(*args, **kwargs):
        thetas.extend(attach_afw(*args, **kwargs))
        return thetas
    monkeypatch.setattr(afw_module, "attach_afw", attach_and_keep)
    AFWStep(epochs=1, lr=1.0, momentum=0.0, lam=0.0, loss_reduction=loss_reduction, theta_init="zero").run(model, task)
    return [t.detach().clone() for t in thetas]


def test_summed_task_loss_is_the_mean_times_the_batch(monkeypatch):
    mean, summed = _theta_step(monkeypatch, "mean"), _theta_step(monkeypatch, "sum")
    assert any(float(t.abs().max()) > 0 for t in mean)
    for a, b in zip(mean, summed):
        torch.testing.assert_close(b, 16 * a)  # ToyTask's batch: 16


def test_regulariser_mean_is_the_sum_over_the_offsets_count():
    # R'(0) = 0, so compare the gradients at θ started from the residual
    n = {}
    for reduction in ("sum", "mean"):
        model, task = _frozen_toy()
        thetas = attach_afw(model, theta_init="residual")
        reg = sum(afw_regularizer(afw_offset(t)).sum() for t in thetas)
        n[reduction] = sum(t.numel() for t in thetas)
        if reduction == "mean":
            reg = reg / n[reduction]
        reg.backward()
        n[reduction + "_grad"] = torch.cat([t.grad for t in thetas])
    torch.testing.assert_close(n["mean_grad"] * n["mean"], n["sum_grad"])


def test_residual_init_starts_g_at_the_latent_weights_residual():
    model, _ = _frozen_toy()
    thetas = attach_afw(model, gamma=1.1, theta_init="residual")
    assert thetas
    for _, layer in quant_layers(model):
        wq = layer.weight_quant
        if wq.afw is None:
            continue
        residual = (layer.weight / wq.step - wq.afw.codes)[wq.afw.mask].detach()
        torch.testing.assert_close(wq.afw.offsets().detach(), residual.clamp(-0.99, 0.99), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="theta_init"):
        attach_afw(_frozen_toy()[0], theta_init="random")


def test_afw_reports_its_objective_at_the_start_and_the_end():
    model, task = _frozen_toy()
    metrics = AFWStep(epochs=4, lr=0.05, loss_reduction="sum", theta_init="residual", reg_reduction="sum").run(model, task)
    assert metrics["afw/weights"] > 0
    assert metrics["afw/objective_last"] < metrics["afw/objective_first"]


def test_afw_objective_on_fixed_batches_before_and_after():
    """The objective compared on the same batches (AFW's first ones) at the start and at the end: lowered, and
    the batch sequence AFW trains on is the one it had without the comparison."""
    model, task = _frozen_toy()
    step = AFWStep(epochs=4, lr=0.05, loss_reduction="sum", theta_init="residual", reg_reduction="sum")
    metrics = step.run(model, task)
    assert metrics["afw/objective_after"] < metrics["afw/objective_before"]
    seen = []
    real_loss = task.loss
    task.loss = lambda m, b: seen.append(b) or real_loss(m, b)
    step.run(_frozen_toy()[0], task)
    n_iter, fixed = task.iterations_for(4), min(4, task.iterations_for(4))
    trained = seen[fixed:fixed + n_iter]  # after the first comparison, before the last
    expected = list(itertools.islice(iter(task.train_batches(epochs=4)), n_iter))
    assert len(trained) == n_iter and all(a is b or torch.equal(a[0], b[0]) for a, b in zip(trained, expected))
