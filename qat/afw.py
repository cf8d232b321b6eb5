"""AFW — adaptive fine-tuning of oscillating weights (SPEC §6, paper §IV-C eq. 13–15).

After training, only the weights frozen for oscillating get a learnable offset θ; every other weight keeps
its integer code and all step sizes stay fixed:

    W_q = s·clamp(w_int + g(θ), qmin, qmax),   g(θ) = clamp(γ·tanh(θ), −1, 1)
    loss = task_loss + λ·Σ R(g),               R(g) = g²·(1 − g²)²

At the end g is hard-rounded to {−1, 0, 1} and the codes are written back into the latent weights.

The paper leaves open what SPEC §6 lists; each is an option here. The defaults are the reading a five-seed study
on the calibration split chose (docs/AFW_SENSITIVITY.md, DEVIATIONS 7c): the paper's batch-mean loss and SGD lr
1e-3, θ started from the residual, λ per offset (λ·mean R); at face value (θ = 0) no code changes on the proxy:
- `loss_reduction`: the task loss as the task gives it, a batch mean ("mean"), or summed over the batch ("sum",
  the Ultralytics convention the paper's detectors train with). With "mean" and λ = 0.1 a code can flip only where
  |s·∂L/∂ŵ| > 0.4·λ for that weight (R' peaks at 0.399), which no proxy weight reaches.
- `theta_init`: θ = 0 ("zero": g starts at the frozen code) or from the latent weight's residual ("residual":
  g(θ₀) = w/s − w_int, AdaRound's initialisation).
- `reg_reduction`: λ·Σ R over the offsets ("sum") or λ times their mean ("mean", λ per weight).
"""
from __future__ import annotations


import itertools

import torch
from torch import nn
from tqdm.auto import tqdm

from .modules import low_bit_layers, quant_layers
from .recipe_registry import Part


def afw_offset(theta: torch.Tensor, gamma: float = 1.1) -> torch.Tensor:
    """g(θ) = clamp(γ·tanh(θ), −1, 1) (eq. 14)."""
    return torch.clamp(gamma * torch.tanh(theta), -1.0, 1.0)


def afw_regularizer(g: torch.Tensor) -> torch.Tensor:
    """R(g) = g²·(1 − g²)², elementwise (eq. 15): zero exactly at g ∈ {−1, 0, 1}."""
    g2 = g * g
    return g2 * (1 - g2) ** 2


class AFWOffsets(nn.Module):
    """Replaces a weight quantizer's forward during AFW: fixed codes plus g(θ) on the frozen ones."""

    def __init__(self, codes: torch.Tensor, mask: torch.Tensor, gamma: float, residual: torch.Tensor | None = None):
        """`residual` (w/s − w_int of the masked weights): start with g(θ) at it instead of 0."""
        super().__init__()
        self.register_buffer("codes", codes.detach().clone())
        self.register_buffer("mask", mask.detach().clone())
        theta = torch.zeros(int(mask.sum()), device=codes.device)
        if residual is not None:  # g(θ₀) = γ·tanh(θ₀) = residual, kept inside g's open range (−1, 1)
            theta = torch.atanh(torch.clamp(residual.detach() / gamma, -0.99 / gamma, 0.99 / gamma))
        self.theta = nn.Parameter(theta)
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


THETA_INITS = ("zero", "residual")
LOSS_REDUCTIONS = ("mean", "sum")
REG_REDUCTIONS = ("sum", "mean")


def attach_afw(model: nn.Module, gamma: float = 1.1, theta_init: str = "zero") -> list[nn.Parameter]:
    """Install AFW on every layer with frozen weights; return the θ parameters (one per layer)."""
    if theta_init not in THETA_INITS:
        raise ValueError(f"AFW: unknown theta_init {theta_init!r}; choose from {', '.join(THETA_INITS)}")
    thetas = []
    for _, layer in low_bit_layers(model):
        wq = layer.weight_quant
        if wq.frozen is None or not bool(wq.frozen.mask.any()):
            continue
        codes = wq.effective_codes(layer.weight)
        residual = None
        if theta_init == "residual":
            residual = (layer.weight.detach() / wq.step.detach() - codes)[wq.frozen.mask]
        wq.afw = AFWOffsets(codes, wq.frozen.mask, gamma, residual)
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
                 lam: float = 0.1, loss_reduction: str = "mean", theta_init: str = "residual", reg_reduction: str = "mean"):
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"AFW: unknown loss_reduction {loss_reduction!r}; choose from {', '.join(LOSS_REDUCTIONS)}")
        if reg_reduction not in REG_REDUCTIONS:
            raise ValueError(f"AFW: unknown reg_reduction {reg_reduction!r}; choose from {', '.join(REG_REDUCTIONS)}")
        self.epochs, self.lr, self.momentum, self.gamma, self.lam = epochs, lr, momentum, gamma, lam
        self.loss_reduction, self.theta_init, self.reg_reduction = loss_reduction, theta_init, reg_reduction

    def run(self, model: nn.Module, task) -> dict:
        for p in model.parameters():
            p.requires_grad_(False)
        thetas = attach_afw(model, self.gamma, self.theta_init)
        n_theta = sum(t.numel() for t in thetas)
        if n_theta == 0:
            metrics = {"afw/weights": 0, "afw/changed_codes": 0}
            metrics.update({f"afw/{k}": v for k, v in task.evaluate(model).items()})
            _restore_requires_grad(model)
            return metrics
        optimizer = torch.optim.SGD(thetas, lr=self.lr, momentum=self.momentum)
        afw_layers = [layer.weight_quant.afw for _, layer in quant_layers(model) if layer.weight_quant.afw is not None]
        batches = iter(task.train_batches(epochs=max(1, int(-(-self.epochs // 1)))))
        n_iter = task.iterations_for(self.epochs)
        model.train()
        # Did AFW lower its objective? Measured on the same fixed batches (its first training batches, so the
        # batch sequence stays as it is) before the first and after the last step.
        fixed = list(itertools.islice(batches, min(FIXED_BATCHES, n_iter)))
        before = self.fixed_objective(model, task, afw_layers, n_theta, fixed)
        objectives = []  # on the device: read once at the end (no host sync per step)
        for it, batch in zip(tqdm(range(n_iter), desc="AFW", leave=False), itertools.chain(fixed, batches)):
            loss = self.objective(model, task, afw_layers, n_theta, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            objectives.append(loss.detach())
        after = self.fixed_objective(model, task, afw_layers, n_theta, fixed)
        soft = task.evaluate(model)
        changed = finalize_afw(model)
        hard = task.evaluate(model)
        _restore_requires_grad(model)
        # Did AFW lower its objective? Its mean over the first and over the last tenth of the steps.
        tenth = max(1, len(objectives) // 10)
        first, last = (float(torch.stack(objectives[:tenth]).mean()), float(torch.stack(objectives[-tenth:]).mean())) \
            if objectives else (float("nan"), float("nan"))
        return {"afw/weights": n_theta, "afw/changed_codes": changed, "afw/soft_metric": soft["metric"],
                "afw/objective_first": first, "afw/objective_last": last,
                "afw/objective_before": before, "afw/objective_after": after,
                **{f"afw/{k}": v for k, v in hard.items()}}

    def objective(self, model, task, afw_layers, n_theta: int, batch) -> torch.Tensor:
        """task loss (batch mean, or summed over the batch) + λ·R (summed over the offsets, or their mean)."""
        reg = sum(afw_regularizer(a.offsets()).sum() for a in afw_layers)
        if self.reg_reduction == "mean":
            reg = reg / n_theta
        task_loss = task.loss(model, batch)
        if self.loss_reduction == "sum":  # the batch-mean loss summed over the batch instead
            task_loss = task_loss * task.inputs(batch).shape[0]
        return task_loss + self.lam * reg

    @torch.no_grad()
    def fixed_objective(self, model, task, afw_layers, n_theta: int, batches) -> float:
        """The objective's mean over `batches` at the current offsets (soft, before rounding)."""
        if not batches:
            return float("nan")
        return float(sum(self.objective(model, task, afw_layers, n_theta, b) for b in batches)) / len(batches)


FIXED_BATCHES = 4  # batches the objective is compared on, before and after AFW


def _restore_requires_grad(model):
    for p in model.parameters():
        p.requires_grad_(True)


AFW = Part("afw", lambda m, bits, tau: AFWStep(m.afw_epochs, m.afw_lr, gamma=m.afw_gamma, lam=m.afw_lambda,
                                               loss_reduction=m.afw_loss, theta_init=m.afw_theta_init,
                                               reg_reduction=m.afw_reg),
           ("afw_gamma", "afw_lambda", "afw_lr", "afw_epochs", "afw_loss", "afw_theta_init", "afw_reg"))
