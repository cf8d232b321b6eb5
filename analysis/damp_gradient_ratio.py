#!/usr/bin/env python
"""How hard Damp pulls against the task, per layer: mean |∂(λ·L_damp)/∂w| over mean |∂L_task/∂w| on a
classifier run's checkpoint (qat/baselines/damp.py; SPEC §7).

The task gradient is averaged over a few training batches of the run's own data; the dampening gradient is that of
λ·L_damp with the run's aggregation (kernel_mean: summed over output channels, averaged over C_in·k·k), so a wide
pointwise layer gets ~C_in/9 times less pull per weight than a depthwise 3×3 one. Layers are grouped as depthwise,
pointwise (1×1) and other; the report gives each group's median ratio, beside where the run's late oscillation sits
(`osc/late_fraction_depthwise` / `_other` of its result.json, when finished).

    python analysis/damp_gradient_ratio.py runs/proxy/table5/mobilenetv2/lsq/w3a3/s0 --checkpoint checkpoint_tau.pt \
        --damp-weight 0.1 1 10 100
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def layer_group(layer) -> str:
    """depthwise (qat.freeze.is_depthwise, as the oscillation statistics split them), pointwise (1×1 conv) or
    other (linear, full k×k convs such as the stem)."""
    from qat.freeze import is_depthwise
    if is_depthwise(layer):
        return "depthwise"
    if layer.weight.dim() == 4 and layer.weight.shape[2:] == (1, 1):
        return "pointwise"
    return "other"


def gradient_ratios(run_dir: Path, checkpoint: str, batches: int = 4) -> list[tuple[str, str, float]]:
    """(layer, group, mean|∂L_damp/∂w| / mean|∂L_task/∂w|) per layer Damp covers, for λ = 1."""
    from qat.baselines.damp import DampeningHook
    from qat.config import RunConfig
    from qat.modules import quant_layers
    from qat.train import checkpoint as ckpt
    from qat.train.classification import Trainer
    state = ckpt.load(run_dir / checkpoint)
    cfg = RunConfig.from_recorded(state["config"], wandb=False, resume=False, device="cpu")
    trainer = Trainer(cfg)
    model, _ = trainer.quantized_model(init=False)
    model.load_state_dict(state["model"])
    model.train()
    hook = DampeningHook()
    names = {id(layer): name for name, layer in quant_layers(model)}
    layers = hook.layers(model)
    task = [torch.zeros_like(layer.weight) for layer in layers]
    for i, (x, y) in enumerate(trainer.train_data.epoch(0)):
        if i == batches:
            break
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for g, layer in zip(task, layers):
            g += layer.weight.grad / batches
    model.zero_grad()
    hook.loss(model).backward()
    return [(names[id(layer)], layer_group(layer), (layer.weight.grad.abs().mean() / g.abs().mean()).item())
            for g, layer in zip(task, layers)]


def report(run_dir: Path, checkpoint: str, weights: list[float]) -> str:
    ratios = gradient_ratios(run_dir, checkpoint)
    groups = sorted({g for _, g, _ in ratios})
    lines = [f"{run_dir} ({checkpoint}): median over layers of mean|∂(λ·L_damp)/∂w| / mean|∂L_task/∂w|", "",
             "| λ | " + " | ".join(f"{g} ({sum(1 for _, k, _ in ratios if k == g)} layers)" for g in groups) + " |",
             "|---|" + "---|" * len(groups)]
    for lam in weights:
        lines.append(f"| {lam:g} | " + " | ".join(
            f"{lam * statistics.median(r for _, k, r in ratios if k == g):.3g}" for g in groups) + " |")
    result = run_dir / "result.json"
    if result.is_file():
        r = json.loads(result.read_text())
        lines += ["", "The run's late oscillation (% of low-bit weights above the freeze threshold, last 20 %): "
                      + ", ".join(f"{label} {100 * r[k]:.3f}" for label, k in
                                  (("depthwise", "osc/late_fraction_depthwise"),
                                   ("all other layers", "osc/late_fraction_other")) if k in r) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a classifier QAT run directory")
    p.add_argument("--checkpoint", default="checkpoint_tau.pt", help="its checkpoint to measure at")
    p.add_argument("--damp-weight", type=float, nargs="+", default=[0.1], help="λ values to report")
    a = p.parse_args(argv)
    if not (a.run / a.checkpoint).is_file():
        raise SystemExit(f"error: {a.run / a.checkpoint} does not exist")
    print(report(a.run, a.checkpoint, a.damp_weight))
    return 0


if __name__ == "__main__":
    sys.exit(main())
