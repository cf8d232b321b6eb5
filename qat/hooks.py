"""The training-hook interface through which every recipe acts on a training loop.

One loop (classification here, the Ultralytics trainer for detection) calls these at fixed points;
a recipe is a list of hooks plus post-training steps. Hooks see the bare model (never the DDP
wrapper) and the iteration counter, so the same hook runs under any trainer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class TrainState:
    """What a hook may read: the bare model and where training stands (iterations count from 0)."""
    model: nn.Module
    iteration: int = 0          # global optimizer-step counter t
    total_iterations: int = 1   # T: iterations of the whole QAT schedule (all phases)
    epoch: int = 0
    metrics: dict = field(default_factory=dict)  # per-epoch values a hook wants logged

    @property
    def progress(self) -> float:
        return self.iteration / max(1, self.total_iterations)


class TrainingHook:
    """Override what you need; every method is optional."""

    def on_train_start(self, state: TrainState) -> None: ...

    def extra_loss(self, state: TrainState) -> torch.Tensor | None:
        """A term added to the task loss of this iteration (e.g. the dampening loss)."""
        return None

    def before_optimizer_step(self, state: TrainState) -> None:
        """After backward, before optimizer.step (gradients are final)."""

    def after_optimizer_step(self, state: TrainState) -> None:
        """Right after optimizer.step (EAD, freezing, EMA)."""

    def eval_model(self) -> nn.Module | None:
        """A model to evaluate instead of the trained one (e.g. RedYolo's EMA copy); None = the model."""
        return None

    def epoch_metrics(self, state: TrainState) -> dict:
        """Scalars to log at the end of an epoch."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...
