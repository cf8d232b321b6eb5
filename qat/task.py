"""The task interface that post-training steps (AFW, AdaRound, QC, Table I's step-only phase) use.

Classification and detection each provide one, so a post step is written once and runs on both;
`LoaderTask` is one over your own data loader, loss and evaluation (README, "Using the library").
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterable, Iterator, Protocol

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


class LoaderTask:
    """TaskAdapter over a loader of (input, target) batches, `loss_fn(output, target)` and `evaluate_fn(model)`
    (the headline metric, a number); `calib`: the batches, in the loader's format, that AdaRound and RedYolo's
    QC step calibrate on (default: the loader's first 4). Batches are moved to `device` when one is given."""

    def __init__(self, loader: Iterable, loss_fn: Callable, evaluate_fn: Callable[[nn.Module], float],
                 device: torch.device | str | None = None, calib: list | None = None):
        self.loader, self.loss_fn, self.evaluate_fn, self.device = loader, loss_fn, evaluate_fn, device
        self._calib = calib

    def _moved(self, batch):
        return batch if self.device is None else tuple(t.to(self.device) for t in batch)

    def train_batches(self, epochs: int = 1) -> Iterator[Any]:
        for _ in range(epochs):
            for batch in self.loader:
                yield self._moved(batch)

    def iterations_for(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * len(self.loader)))

    def calib_batches(self) -> list:
        batches = self._calib if self._calib is not None else itertools.islice(self.loader, 4)
        return [self._moved(batch) for batch in batches]

    def inputs(self, batch: Any) -> torch.Tensor:
        return batch[0]

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.loss_fn(model(batch[0]), batch[1])

    def evaluate(self, model: nn.Module) -> dict:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return {"metric": float(self.evaluate_fn(model))}
        finally:
            model.train(was_training)

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass  # the post steps return their metrics; log them where your loop logs
