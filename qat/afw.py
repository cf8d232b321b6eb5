"""AFW — adaptive fine-tuning of oscillating weights (SPEC §6, paper §IV-C eq. 13–15).

After training, only the weights frozen for oscillating get a learnable offset θ (initialised 0);
every other weight keeps its integer code and all step sizes stay fixed:

    W_q = s·clamp(w_int + g(θ), qmin, qmax),   g(θ) = clamp(γ·tanh(θ), −1, 1)
    loss = task_loss + λ·Σ R(g),               R(g) = g²·(1 − g²)²

At the end g is hard-rounded to {−1, 0, 1} and the codes are written back into the latent weights.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn
from tqdm.auto import tqdm

from .modules import low_bit_layers, quant_layers


def afw_offset(theta: torch.Tensor, gamma: float = 1.1) -> torch.Tensor:
    """g(θ) = clamp(γ·tanh(θ), −1, 1) (eq. 14)."""
    return torch.clamp(gamma * torch.tanh(theta), -1.0, 1.0)


def afw_regularizer(g: torch.Tensor) -> torch.Tensor:
    """R(g) = g²·(1 − g²)², elementwise (eq. 15): zero exactly at g ∈ {−1, 0, 1}."""
    g2 = g * g
    return g2 * (1 - g2) ** 2


class AFWOffsets(nn.Module):
    """Replaces a weight quantizer's forward during AFW: fixed codes plus g(θ) on the frozen ones."""

    def __init__(self, codes: torch.Tensor, mask: torch.Tensor, gamma: float):
        super().__init__()
        self.register_buffer("codes", codes.detach().clone())
        self.register_buffer("mask", mask.detach().clone())
        self.theta = nn.Parameter(torch.zeros(int(mask.sum()), device=codes.device))
        self.gamma = gamma

    def offsets(self) -> torch.Tensor:
        return afw_offset(self.theta, self.gamma)

    def forward(self, weight: torch.Tensor, quantizer) -> torch.Tensor:
        moved = torch.clamp(self.codes[self.mask] + self.offsets(), quantizer.qmin, quantizer.qmax)
        return quantizer.step.detach() * self.codes.masked_scatter(self.mask, moved)

    @torch.no_grad()
    def hard_codes(self, quantizer) -> torch.Tensor:
        moved = torch.clamp(self.codes[self.mask] + torch.round(self.offsets()), quantizer.qmin, quantizer.qmax)
        return self.codes.masked_scatter(self.mask, moved)


def attach_afw(model: nn.Module, gamma: float = 1.1) -> list[nn.Parameter]:
    """Install AFW on every layer with frozen weights; return the θ parameters (one per layer)."""
    thetas = []
    for _, layer in low_bit_layers(model):
        wq = layer.weight_quant
        if wq.frozen is None or not bool(wq.frozen.mask.any()):
            continue
        codes = wq.frozen.codes_with_frozen(wq.codes(layer.weight))
        wq.afw = AFWOffsets(codes, wq.frozen.mask, gamma)
        thetas.append(wq.afw.theta)
    return thetas


@torch.no_grad()
def finalize_afw(model: nn.Module) -> int:
    """Hard-round g to {−1, 0, 1}, write the codes back as latent weights s·code, remove AFW.
    Returns how many codes changed."""
    changed = 0
    for _, layer in low_bit_layers(model):
        wq = layer.weight_quant
        if wq.afw is None:
            continue
        codes = wq.afw.hard_codes(wq)
        changed += int((codes != wq.afw.codes).sum())
        layer.weight.copy_(wq.step * codes)
        wq.frozen.codes = torch.where(wq.frozen.mask, codes, wq.frozen.codes)
        wq.afw = None
    return changed


class AFWStep:
    """Post-training AFW phase (paper: SGD lr 1e-3, momentum 0.9, 10 epochs, γ 1.1, λ 0.1)."""
    name = "afw"

    def __init__(self, epochs: float = 10, lr: float = 1e-3, momentum: float = 0.9, gamma: float = 1.1,
                 lam: float = 0.1):
        self.epochs, self.lr, self.momentum, self.gamma, self.lam = epochs, lr, momentum, gamma, lam

    def run(self, model: nn.Module, task) -> dict:
        for p in model.parameters():
            p.requires_grad_(False)
        thetas = attach_afw(model, self.gamma)
        n_theta = sum(t.numel() for t in thetas)
        if n_theta == 0:
            metrics = {"afw/weights": 0, "afw/changed_codes": 0}
            metrics.update({f"afw/{k}": v for k, v in task.evaluate(model).items()})
            _restore_requires_grad(model)
            return metrics
        optimizer = torch.optim.SGD(thetas, lr=self.lr, momentum=self.momentum)
        afw_layers = [layer.weight_quant.afw for _, layer in quant_layers(model) if layer.weight_quant.afw is not None]
        batches = task.train_batches(epochs=max(1, int(-(-self.epochs // 1))))
        n_iter = task.iterations_for(self.epochs)
        model.train()
        for it, batch in zip(tqdm(range(n_iter), desc="AFW", leave=False), batches):
            reg = sum(afw_regularizer(a.offsets()).sum() for a in afw_layers)
            loss = task.loss(model, batch) + self.lam * reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        soft = task.evaluate(model)
        changed = finalize_afw(model)
        hard = task.evaluate(model)
        _restore_requires_grad(model)
        return {"afw/weights": n_theta, "afw/changed_codes": changed, "afw/soft_metric": soft["metric"],
                **{f"afw/{k}": v for k, v in hard.items()}}


def _restore_requires_grad(model):
    for p in model.parameters():
        p.requires_grad_(True)
