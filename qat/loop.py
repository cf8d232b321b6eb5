"""One QAT optimizer step under a recipe's training hooks (qat/hooks.py), for any training loop.

The classification trainer takes its steps through `qat_step`, and so can your own loop (README, "Using the
library on your own model"). The Ultralytics trainer does the same in its own `optimizer_step` (AMP scaler,
gradient clipping: qat/detection/ultralytics_qat.py).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .hooks import TrainingHook, TrainState


def qat_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, hooks: Sequence[TrainingHook],
             state: TrainState, step_sizes: Sequence[torch.nn.Parameter] = ()) -> torch.Tensor:
    """Backward and optimizer step on `loss` plus the hooks' extra losses (e.g. dampening); the hooks see the
    final gradients before the step (ScaleGrad needs none: it lives in the quantizer's backward) and the new
    weights after it (EAD, freezing, EMA). `step_sizes` (qat.modules.step_parameters) are kept positive.
    Advances `state.iteration`; returns the total loss."""
    extra = [term for term in (h.extra_loss(state) for h in hooks) if term is not None]
    total = loss + sum(extra) if extra else loss
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    for h in hooks:
        h.before_optimizer_step(state)
    optimizer.step()
    if step_sizes:
        with torch.no_grad():
            torch._foreach_clamp_min_(list(step_sizes), 1e-8)  # step sizes stay positive
    for h in hooks:
        h.after_optimizer_step(state)
    state.iteration += 1
    return total
