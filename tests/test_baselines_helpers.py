"""Shared fixtures of the baseline tests: a tiny quantized CNN and a minimal TaskAdapter over random
tensors. (Holds no tests; the other tests_baselines_* files import it.)"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qat.modules import convert
from qat.prepare.calibrate import calibrate_activations, init_weight_steps

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def eager_quantizer(monkeypatch):
    """The baseline tests run the quantizer's eager path (compiling the fused kernels costs ~30 s of
    CPU here and is tested with the quantizer); QAT_BASELINES_FUSED=1 runs them on the fused path."""
    monkeypatch.setenv("QAT_FUSED", "1" if os.environ.get("QAT_BASELINES_FUSED") == "1" else "0")

IMG = 8
CLASSES = 4


def tiny_cnn(bits: int = 3, seed: int = 0, quantize_first_last: bool = True, per_channel: bool = False) -> nn.Module:
    """conv(3→8)-ReLU-conv(8→8)-ReLU-conv(8→16, stride 2)-ReLU-pool-linear(16→4), quantized and
    initialised (LSQ weight steps, min-max activation steps on random batches)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES))
    convert(model, bits, quantize_first_last=quantize_first_last, per_channel=per_channel)
    init_weight_steps(model)
    calibrate_activations(model, [torch.randn(16, 3, IMG, IMG, generator=g) for _ in range(2)])
    return model


class ToyTask:
    """TaskAdapter over fixed random images whose label is a fixed linear function of the image."""

    def __init__(self, n_train: int = 4, n_calib: int = 4, n_val: int = 2, batch: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        proj = torch.randn(3 * IMG * IMG, CLASSES, generator=g)

        def make(n):
            out = []
            for _ in range(n):
                x = torch.randn(batch, 3, IMG, IMG, generator=g)
                out.append((x, (x.flatten(1) @ proj).argmax(1)))
            return out

        self.train, self.calib, self.val = make(n_train), make(n_calib), make(n_val)
        self.logged: list[tuple[int | None, dict]] = []
        self.loss_calls = 0

    def train_batches(self, epochs: int = 1):
        for _ in range(epochs):
            yield from self.train

    def iterations_for(self, epochs: float) -> int:
        return max(1, round(epochs * len(self.train)))

    def calib_batches(self):
        return list(self.calib)

    def inputs(self, batch):
        return batch[0]

    def loss(self, model, batch):
        self.loss_calls += 1
        return F.cross_entropy(model(batch[0]), batch[1])

    @torch.no_grad()
    def evaluate(self, model) -> dict:
        was = model.training
        model.eval()
        correct = total = 0
        loss = 0.0
        for x, y in self.val:
            out = model(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            total += y.numel()
        model.train(was)
        return {"metric": 100.0 * correct / total, "loss": loss / total}

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.logged.append((step, dict(metrics)))


def snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
