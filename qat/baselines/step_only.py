"""Table I "Freeze weight" phase (SPEC §7): after LSQ training, freeze every latent weight (and bias)
and keep training only the step sizes of weights and activations; Fig. 1(c) follows the weight and
activation step sizes of the 3rd quantized layer at every iteration; the accuracy after this phase is
what Table I reports.

Optimiser: SGD, lr 1e-3, momentum 0.9, no weight decay, constant lr — the paper preset's QAT
optimiser (SPEC §9); the paper does not state the optimiser of this phase (docs/DEVIATIONS.md).
Logging: `task.log({"fig1c/weight_step", "fig1c/act_step", "fig1c/iteration", "step_only/loss"},
step=step_offset + it)` after the optimizer step of every iteration `it` (0-based within this phase);
per-channel steps are logged as their mean. These are host syncs, acceptable for a logged phase.
Pass `step_offset` (the iterations already logged by training) where the logger needs monotonically
increasing steps (W&B).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from ..modules import low_bit_layers, quant_layers, step_parameters
from ..recipe_registry import Part, Recipe, register_recipe


class StepOnlyStep:
    name = "step_only"

    def __init__(self, epochs: float = 1, lr: float = 1e-3, momentum: float = 0.9, log_layer: int = 2,
                 step_offset: int = 0):
        if epochs <= 0:
            raise ValueError(f"step-only epochs must be positive, got {epochs}")
        self.epochs, self.lr, self.momentum = epochs, lr, momentum
        self.log_layer, self.step_offset = log_layer, step_offset

    def run(self, model: nn.Module, task) -> dict:
        layers = [layer for _, layer in quant_layers(model)]
        if len(layers) <= self.log_layer:
            raise ValueError(f"step-only: the model has {len(layers)} quantized layers, "
                             f"cannot log layer index {self.log_layer}")
        logged = layers[self.log_layer]
        steps = step_parameters(model)
        requires = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in steps:
            p.requires_grad_(True)
        optimizer = torch.optim.SGD(steps, lr=self.lr, momentum=self.momentum, weight_decay=0.0)
        codes_before = [layer.weight_quant.codes(layer.weight) for _, layer in low_bit_layers(model)]
        start = (float(logged.weight_quant.step.detach().mean()), float(logged.input_quant.step.detach().mean()))
        n_iter = task.iterations_for(self.epochs)
        batches = task.train_batches(epochs=max(1, math.ceil(self.epochs)))
        was_training = model.training
        model.train()
        it = -1
        try:
            for it, batch in zip(tqdm(range(n_iter), desc="step-only", leave=False), batches):
                loss = task.loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                task.log({"fig1c/weight_step": float(logged.weight_quant.step.detach().mean()),
                          "fig1c/act_step": float(logged.input_quant.step.detach().mean()),
                          "fig1c/iteration": it, "step_only/loss": float(loss.detach())},
                         step=self.step_offset + it)
        finally:
            for p, r in requires.items():
                p.requires_grad_(r)
            model.train(was_training)
        codes_after = [layer.weight_quant.codes(layer.weight) for _, layer in low_bit_layers(model)]
        changed = sum(int((a != b).sum()) for a, b in zip(codes_after, codes_before))
        total = sum(c.numel() for c in codes_before)
        metrics = task.evaluate(model)
        return {"step_only/iterations": it + 1,
                "step_only/weight_step_start": start[0],
                "step_only/weight_step_end": float(logged.weight_quant.step.detach().mean()),
                "step_only/act_step_start": start[1],
                "step_only/act_step_end": float(logged.input_quant.step.detach().mean()),
                "step_only/codes_changed_fraction": changed / max(1, total),
                **{f"step_only/{k}": v for k, v in metrics.items()}}


STEP_ONLY = Part("step_only", lambda m, bits, tau: StepOnlyStep(epochs=m.step_only_epochs), ("step_only_epochs",))
register_recipe(Recipe("lsq-freeze-weights", post=(STEP_ONLY,), branch_from=("lsq", "end"),
                       description="Table I: trained LSQ, then all latent weights frozen and only step sizes trained"))
