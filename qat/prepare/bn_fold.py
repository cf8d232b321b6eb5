"""Static BatchNorm folding (SPEC §8 step 1): W' = W·γ/σ, b' = β + (b − μ)·γ/σ.

Conv→BN pairs are found by running one forward pass and matching tensors: a BatchNorm whose input
is exactly the output tensor of a Conv2d/Linear is folded into it. This works on any model that
runs, traceable or not (timm's BatchNormAct2d, torchvision's Conv2dNormActivation, Ultralytics).
"""
from __future__ import annotations

import torch
from torch import nn

from ..modules import set_submodule
from .function_check import PrologueError, flat_output, rel_error, rounding_tol
from .hooked_forward import hooked_eval_forward


def _bn_replacement(bn: nn.Module) -> nn.Module:
    """What remains of a BN module after folding: its fused activation (timm BatchNormAct2d) or nothing."""
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    rest = [m for m in (drop, act) if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*rest) if rest else nn.Identity()


@torch.no_grad()
def find_conv_bn_pairs(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) for every BatchNorm fed directly by a conv/linear output."""
    # Keep each conv output alive (so its id() cannot be reused by a later tensor) with its version
    # counter (so a conv output modified in place — conv → ReLU(inplace) → BN — is not taken as direct).
    producer: dict[int, tuple[str, torch.Tensor, int]] = {}
    pairs: list[tuple[str, str]] = []

    def pre_hook(mod, inp, name):
        rec = producer.get(id(inp[0]))
        if rec is not None and rec[1] is inp[0] and rec[2] == inp[0]._version:
            pairs.append((rec[0], name))

    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: producer.__setitem__(id(out), (name, out, out._version))))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            hooks.append(m.register_forward_pre_hook(lambda mod, inp, name=name: pre_hook(mod, inp, name)))
    hooked_eval_forward(model, example_input, hooks)
    return list(dict.fromkeys(pairs))


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold BN's running statistics and affine parameters into `conv` in place."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    shape = (-1,) + (1,) * (conv.weight.dim() - 1)
    conv.weight.mul_(scale.view(shape))
    new_bias = shift + (bias - bn.running_mean) * scale
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example_input: torch.Tensor, *, check_tol: float | None = None) -> int:
    """Fold every foldable BatchNorm of `model` in place; return how many were folded.

    BatchNorms that no conv feeds directly (e.g. pre-activation designs) are left in place. Folding must keep the
    output on `example_input` (eval mode) up to rounding (`check_tol`, default `rounding_tol` of the model's
    dtype); otherwise the model is left as it came and `PrologueError` names the conv/BN pair that alone changes
    it most (a conv output that something besides its BN also reads cannot be folded).
    """
    was_training = model.training
    model.eval()
    try:
        modules = dict(model.named_modules())
        pairs = find_conv_bn_pairs(model, example_input)
        y_ref = flat_output(model(example_input))
        convs = {c: (modules[c].weight.detach().clone(),
                     None if modules[c].bias is None else modules[c].bias.detach().clone()) for c, _ in pairs}

        def fold(some):
            for conv_name, bn_name in some:
                fold_conv_bn(modules[conv_name], modules[bn_name])
                set_submodule(model, bn_name, _bn_replacement(modules[bn_name]))

        def unfold(some):
            for conv_name, bn_name in some:
                weight, bias = convs[conv_name]
                modules[conv_name].weight.copy_(weight)
                if bias is None:
                    modules[conv_name].bias = None
                else:
                    modules[conv_name].bias.copy_(bias)
                set_submodule(model, bn_name, modules[bn_name])

        def change() -> float:
            return rel_error(flat_output(model(example_input)), y_ref)

        fold(pairs)
        err = change()
        tol = rounding_tol(next(model.parameters()).dtype) if check_tol is None else check_tol
        if err > tol:
            unfold(pairs)
            alone = []
            for pair in pairs:
                fold([pair])
                alone.append((change(), pair))
                unfold([pair])
            e, (conv_name, bn_name) = max(alone)
            raise PrologueError(
                f"BN folding changed the FP output by {err:.2e} (relative to max|output|; rounding allows {tol:.1e}): "
                f"folding {bn_name} into {conv_name} alone changes it by {e:.2e} — the output of {conv_name} is "
                f"probably read by something besides {bn_name}")
    finally:
        model.train(was_training)
    return len(pairs)
