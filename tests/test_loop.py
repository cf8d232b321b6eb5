"""qat_step's options for trainers that bring their own backward, AMP scaler and clipping (the Ultralytics trainer
steps through it, issue 14)."""
import torch

from qat.hooks import TrainingHook, TrainState
from qat.loop import qat_step


class _Seen(TrainingHook):
    """Records the gradient the hooks see before the step."""

    def __init__(self, param):
        self.param, self.grads = param, []

    def before_optimizer_step(self, state):
        self.grads.append(self.param.grad.clone())


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def test_clip_norm_bounds_the_gradient_the_hooks_and_the_step_see():
    model = _model()
    x = torch.randn(8, 4)
    seen = _Seen(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    qat_step(model(x).square().sum() * 100, optimizer, [seen], TrainState(model), clip_norm=0.5)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert abs(float(norm) - 0.5) < 1e-5 and torch.equal(seen.grads[0], model.weight.grad)


def test_backward_run_by_the_loop_with_a_scaler_steps_on_unscaled_gradients():
    x = torch.randn(8, 4)
    plain, scaled = _model(), _model()
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1)
    opt_scaled = torch.optim.SGD(scaled.parameters(), lr=0.1)
    state_plain, state_scaled = TrainState(plain), TrainState(scaled)
    qat_step(plain(x).square().mean(), opt_plain, [], state_plain)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(scaled(x).square().mean()).backward()  # the loop's own backward (Ultralytics)
    seen = _Seen(scaled.weight)
    assert qat_step(None, opt_scaled, [seen], state_scaled, scaler=scaler) is None
    torch.testing.assert_close(seen.grads[0], plain.weight.grad)  # hooks see unscaled gradients
    for a, b in zip(plain.parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b)
    assert all(p.grad is None for p in scaled.parameters())  # cleared for the loop's next backward
    assert state_plain.iteration == state_scaled.iteration == 1
