"""EAD — EMA-aware distance (SPEC §3, paper §IV-B eq. 11–12), applied right after each optimizer
step for iterations t > τ, in place:

    W ← α·W_prev + (1−α)·W_new,   α = clamp(k·Δ, 0, α_max),   Δ = |W_new/s − round(W_new/s)|
    s ← (1−μ)·s_prev + μ·s_new,    μ = (1 − (t−τ)/(T−τ))·μ_init       (weight and activation steps)

Δ is measured in units of the step size (the paper writes |W − Ŵ| in weight units, which would make
k depend on each layer's scale); see docs/DEVIATIONS.md.
"""
from __future__ import annotations

import torch

from .hooks import TrainingHook, TrainState
from .modules import low_bit_layers, quant_layers
from .recipe_registry import Part


def ead_alpha(weight: torch.Tensor, step: torch.Tensor, k: float, alpha_max: float) -> torch.Tensor:
    """α = clamp(k·Δ, 0, α_max) with Δ the distance of W/s to its nearest integer level."""
    v = weight / step
    distance = (v - torch.round(v)).abs()
    return torch.clamp(k * distance, 0.0, alpha_max)


def ead_mu(iteration: int, tau: int, total: int, mu_init: float) -> float:
    """μ = (1 − (t−τ)/(T−τ))·μ_init: step sizes move ever more slowly and are fixed at t = T."""
    return (1.0 - (iteration - tau) / max(1, total - tau)) * mu_init


class EADHook(TrainingHook):
    """Distance-aware EMA of latent weights (layers ≤ 4 bits) and of all step sizes for t > τ."""

    def __init__(self, tau: int, k: float = 1.0, alpha_max: float = 0.99, mu_init: float = 0.1,
                 max_bits: int = 4):
        self.tau, self.k, self.alpha_max, self.mu_init, self.max_bits = tau, k, alpha_max, mu_init, max_bits
        self._previous: list[torch.Tensor] | None = None
        self.changed_codes: torch.Tensor | None = None  # codes EAD's blend moved off the optimizer's, since τ

    def _active(self, state: TrainState) -> bool:
        # before_optimizer_step sees the iteration about to run; the update it makes is iteration+1.
        return state.iteration + 1 > self.tau

    def _tensors(self, model):
        """The low-bit layers (the owners of the weights EAD blends) and every step size."""
        layers = [layer for _, layer in low_bit_layers(model, self.max_bits)]
        steps = [q.step for _, layer in quant_layers(model) for q in (layer.weight_quant, layer.input_quant)]
        return layers, steps

    @torch.no_grad()
    def before_optimizer_step(self, state: TrainState) -> None:
        if not self._active(state):
            self._previous = None
            return
        layers, steps = self._tensors(state.model)
        self._previous = [t.detach().clone() for t in [layer.weight for layer in layers] + steps]

    @torch.no_grad()
    def after_optimizer_step(self, state: TrainState) -> None:
        if self._previous is None:
            return
        t = state.iteration + 1
        layers, steps = self._tensors(state.model)
        prev_w, prev_s = self._previous[:len(layers)], self._previous[len(layers):]
        optimizer_codes = [layer.weight_quant.effective_codes(layer.weight) for layer in layers]
        for layer, w_prev in zip(layers, prev_w):
            w = layer.weight
            alpha = ead_alpha(w, layer.weight_quant.step.clamp_min(1e-8), self.k, self.alpha_max)
            w.copy_(alpha * w_prev + (1 - alpha) * w)
        mu = ead_mu(t, self.tau, state.total_iterations, self.mu_init)
        for s, s_prev in zip(steps, prev_s):
            s.copy_((1 - mu) * s_prev + mu * s)
        # Did EAD act? Count the codes its update moved off the optimizer's (summed on the device: no host sync).
        if layers:
            changed = sum((layer.weight_quant.effective_codes(layer.weight) != codes).sum()
                          for layer, codes in zip(layers, optimizer_codes))
            self.changed_codes = changed if self.changed_codes is None else self.changed_codes + changed
        self._previous = None

    def epoch_metrics(self, state: TrainState) -> dict:
        if state.iteration <= self.tau:
            return {"ead/active": 0.0}
        changed = 0 if self.changed_codes is None else int(self.changed_codes)
        return {"ead/active": 1.0, "ead/mu": ead_mu(state.iteration, self.tau, state.total_iterations, self.mu_init),
                "ead/changed_codes": changed}

    def state_dict(self) -> dict:
        return {"changed_codes": None if self.changed_codes is None else int(self.changed_codes)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("changed_codes") is not None:
            self.changed_codes = torch.tensor(state["changed_codes"], dtype=torch.int64)


EAD = Part("ead", lambda m, bits, tau: EADHook(tau, m.ead_k, m.ead_alpha_max, m.ead_mu_init),
           ("ead_k", "ead_alpha_max", "ead_mu_init"))
