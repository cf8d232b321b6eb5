"""One QAT optimizer step under a recipe's training hooks (qat/hooks.py), for any training loop.

Every trainer takes its steps through `qat_step`: the classification loop (and the torch detectors through it),
the Ultralytics trainer (with its AMP scaler and gradient clipping, after Ultralytics' loop ran the backward),
and your own loop (README, "Using the library on your own model").
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from .hooks import TrainingHook, TrainState


def qat_step(loss: torch.Tensor | None, optimizer: torch.optim.Optimizer, hooks: Sequence[TrainingHook],
             state: TrainState, step_sizes: Sequence[torch.nn.Parameter] = (), *,
             scaler: torch.amp.GradScaler | None = None, clip_norm: float | None = None,
             clip_params: Iterable[torch.Tensor] | None = None) -> torch.Tensor | None:
    """Backward and optimizer step on `loss` plus the hooks' extra losses (e.g. dampening); the hooks see the
    final gradients before the step (ScaleGrad needs none: it lives in the quantizer's backward) and the new
    weights after it (EAD, freezing, EMA). `step_sizes` (qat.modules.step_parameters) are kept positive.

    `loss=None`: the loop ran the backward itself (Ultralytics', with the hooks' extra loss added by the model's
    loss); the gradients are then cleared after the step. `scaler`: an AMP GradScaler the backward was scaled
    with (unscaled before clipping and the hooks). `clip_norm`: clip the gradient norm of `clip_params`
    (default: the optimizer's parameters) to it. Advances `state.iteration`; returns the total loss."""
    total = None
    if loss is not None:
        extra = [term for term in (h.extra_loss(state) for h in hooks) if term is not None]
        total = loss + sum(extra) if extra else loss
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(total) if scaler is not None else total).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_norm is not None:
        params = clip_params if clip_params is not None else [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm=clip_norm)
    for h in hooks:
        h.before_optimizer_step(state)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if loss is None:
        optimizer.zero_grad()
    if step_sizes:
        with torch.no_grad():
            torch._foreach_clamp_min_(list(step_sizes), 1e-8)  # step sizes stay positive
    for h in hooks:
        h.after_optimizer_step(state)
    state.iteration += 1
    return total
