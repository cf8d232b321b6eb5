"""One eval-mode forward pass with temporary hooks: how the prologue (BN fold) and AdaRound read which module feeds
which, leaving the model's mode as it was and no hook behind."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def hooked_eval_forward(model: nn.Module, example_input: torch.Tensor, hooks: list) -> None:
    """Run `model(example_input)` in eval mode, then remove the registered `hooks` (their handles) and restore the
    model's training mode, also when the forward fails."""
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
