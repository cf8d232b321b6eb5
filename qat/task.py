"""The task interface that post-training steps (AFW, AdaRound, QC, Table I's step-only phase) use.

Classification and detection each provide one, so a post step is written once and runs on both.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Protocol

import torch
from torch import nn


class TaskAdapter(Protocol):
    def train_batches(self, epochs: int = 1) -> Iterator[Any]:
        """Training batches (already on the device) for `epochs` passes; each is what `loss` takes."""

    def iterations_for(self, epochs: float) -> int:
        """Optimizer steps in `epochs` (fractional epochs allowed) passes over the training data."""

    def calib_batches(self) -> Iterable[Any]:
        """Calibration batches (the calibration split), each what `loss`/`inputs` take."""

    def inputs(self, batch: Any) -> torch.Tensor:
        """The model input tensor of a batch."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Task loss of `model` on `batch` (model in train mode where the task needs it)."""

    def evaluate(self, model: nn.Module) -> dict:
        """Validation metrics; the headline one under the key `metric` (top-1 % or mAP@[.5:.95] %)."""

    def log(self, metrics: dict, step: int | None = None) -> None:
        """Send metrics to the run's logger (no-op when there is none)."""


class PostStep(Protocol):
    """A post-training step: changes the trained model in place and returns metrics to record."""
    name: str

    def run(self, model: nn.Module, task: TaskAdapter) -> dict: ...
