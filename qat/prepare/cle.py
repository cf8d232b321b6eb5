"""Cross-Layer Equalization and high-bias absorption (SPEC §8 step 2; Nagel et al. 2019, "Data-Free
Quantization", DFQ §4.1–4.2), applied to the BN-folded FP model before quantizers are inserted.

Pipeline (as in DFQ and AIMET): fold BN → find conv→act→conv chains → make their ReLU6s per-channel clips (DFQ: ReLU)
→ equalize → absorb high biases.

Finding the chains
------------------
One forward pass with hooks on every leaf module records which tensor object each call consumed and
produced (like `bn_fold.find_conv_bn_pairs`; every recorded tensor is kept alive during the pass so
that `id()`s are not reused). A *candidate* is a Conv2d/Linear (called once) whose output tensor
reaches exactly one other Conv2d/Linear of the same kind (called once), possibly through
positive-homogeneous activation modules (ReLU, ReLU6, LeakyReLU, Identity, Dropout in eval), with no
other module consuming the middle tensor. In-place activations (timm's `ReLU6(inplace=True)`) return
the very tensor they got; the walk then looks at the consumers called after the activation.

Module hooks cannot see consumers that are not modules (`x + branch(x)` inside a block's forward,
`torch.cat`, a tensor returned as a model output). Each candidate is therefore **verified by
outcome**: on a float64 copy of the model and the first two samples of the example batch (so that the
check is far from rounding noise and cheap), the ReLU6s of all candidates are replaced by ReLU, one
reference output is computed, and then, candidate by candidate, a random positive per-channel scaling
(log-uniform in [1/4, 4]) is applied to the pair, the output is compared with the reference, and the
weights are restored. A relative change (max-abs, relative to max|y|) above `tol` (1e-5 in float64)
means the middle tensor is used elsewhere: the pair is rejected ("reverted") and its ReLU6s are put
back. A random probe (rather than the data-driven CLE scale, which may be close to 1 on some channels)
tests the structural invariance itself, so every CLE scale applied later is safe. After equalization
the float32 model is compared once more with its ReLU-replaced self (`rel_error_vs_relu`).
Probing in float32 (`probe_dtype=None`) needs `tol` ≈ 1e-3: the rounding noise of the proxy
MobileNetV2 reaches ~3e-5 and rejected a valid pair at 1e-5. A branch that outputs exact zeros (timm's
zero-initialised last BN of a residual block, before training) is invisible to the probe, but its
ranges are 0, so CLE leaves it unscaled (s = 1) and no bias is absorbed from it.

ReLU6 in a chain
----------------
ReLU6 is not positive-homogeneous (relu6(s·x) ≠ s·relu6(x)). By default (`relu6="clip"`) every ReLU6 of
a kept chain becomes a `ChannelClip` with per-channel clip level 6, which equalization divides by the
channel's scale and absorption lowers by c: the FP function is kept exactly. With `relu6="relu"` it
becomes ReLU, as DFQ and AIMET do; that changes the FP model (the report gives the relative output
change on the example batch: on the proxy MobileNetV2 it cost 16 points of top-1). ReLU6 modules that
are called more than once (shared) do not form chains, so no replacement reaches outside the chains.

Equalization
------------
For a pair (W1, W2): r1_i = max|W1[i, ...]| (output channel i of layer 1, bias excluded), r2_i =
max|W2[:, i, ...]| (input channel i of layer 2; for a grouped/depthwise W2 of shape [O, I/g, k, k],
input channel i = group i // (I/g), slot i % (I/g), over the output channels of that group — for a
depthwise W2 it is W2[i]); s_i = sqrt(r1_i / r2_i) (1 where either range is 0); W1[i] /= s_i,
b1[i] /= s_i, W2[:, i] *= s_i. Both ranges become sqrt(r1_i · r2_i).

Conv–depthwise–conv triples (MobileNetV2's inverted residual) and longer chains (a projection conv
feeding the next block's expansion conv without a skip) are handled the DFQ way: all pairs are
equalized in execution order, and the sweep is repeated until the largest |log s| of a sweep falls
below `converge_tol` (or `iterations` sweeps). For a triple the fixed point is AIMET's cube-root
solution (r1 = r_dw = r3 = cube root of their product per channel, since the product is invariant);
iterating pairs needs no special case for chains of any length.

High-bias absorption
--------------------
For a kept chain conv1 → ReLU (or LeakyReLU) → conv2, per channel c = max(0, β − 3·σ) where β and σ
are the mean and standard deviation of conv1's pre-activation output. With c ≤ pre-activation,
relu(x − c) = relu(x) − c, so b1 -= c and b2 += Σ_{i,k} W2[:, i, k]·c_i keep the function exactly;
elsewhere (the ≈0.1% of values below β − 3σ under a Gaussian, and the zero-padded borders of a k>1
conv2, whose padded zeros would have had to become −c) it is an approximation, as in DFQ.

SPEC §8 writes max(0, β − 3|γ|) with BN's (β, γ): BN's output is γ·x̂ + β with x̂ of unit variance, so
β is the pre-activation mean and |γ| its std. Our BN is folded before CLE, so: if `bn_stats` (from
`capture_bn_stats`, called BEFORE `fold_batchnorm`) is given, (β, |γ|) come from it — `equalize`
divides them by the CLE scale of the channel when passed the same dict, and absorption subtracts c
from β — else they are estimated empirically on calibration data (per-channel mean and std of the
pre-activation output over batch and space; AIMET uses the BN parameters only).
"""
from __future__ import annotations

import copy
import math
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn

from ..modules import QUANT_LAYERS, set_submodule
from .bn_fold import find_conv_bn_pairs
from .channel_clip import ChannelClip

# Positive-homogeneous activations (ReLU6 once replaced by ReLU, or by a ChannelClip whose clip level
# CLE rescales with the channel): f(s·x) = s·f(x) for s > 0.
HOMOGENEOUS_ACTS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Identity, nn.Dropout, ChannelClip)
# Activations through which a bias can be absorbed: f(x − c) = f(x) − c for x ≥ c ≥ 0.
RECTIFIERS = (nn.ReLU, nn.LeakyReLU, ChannelClip)
RELU6_MODES = ("clip", "relu")


@dataclass
class CLEPair:
    conv1: str                # layer whose output channels are divided by s
    conv2: str                # layer whose input channels are multiplied by s
    acts: tuple[str, ...]     # activation modules between them, in order


# --------------------------------------------------------------------------------------------------
# small helpers

def _is_layer(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QUANT_LAYERS)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _flat_output(out) -> torch.Tensor:
    ts = [t.detach().reshape(-1).to(torch.float64) for t in _tensors(out) if t.is_floating_point()]
    if not ts:
        raise ValueError("CLE: the model output contains no floating-point tensor to compare")
    return torch.cat(ts)


def _rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _as_pair(p) -> CLEPair:
    return p if isinstance(p, CLEPair) else CLEPair(p["conv1"], p["conv2"], tuple(p["acts"]))


def _compatible(l1: nn.Module, l2: nn.Module) -> bool:
    if isinstance(l1, nn.Conv2d) and isinstance(l2, nn.Conv2d):
        return l1.out_channels == l2.in_channels
    if isinstance(l1, nn.Linear) and isinstance(l2, nn.Linear):
        return l1.out_features == l2.in_features
    return False


def out_ranges(layer: nn.Module) -> torch.Tensor:
    """r1: max|W| per output channel."""
    return layer.weight.detach().abs().flatten(1).amax(1)


def _grouped_view(layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
    """W as [groups, out/groups, in/groups, rest] (Linear: one group, rest = 1)."""
    g = layer.groups if isinstance(layer, nn.Conv2d) else 1
    return w.reshape(g, w.shape[0] // g, w.shape[1], -1)


def in_ranges(layer: nn.Module) -> torch.Tensor:
    """r2: max|W| per input channel (grouped/depthwise: over the output channels of the channel's group)."""
    return _grouped_view(layer, layer.weight.detach().abs()).amax(dim=(1, 3)).reshape(-1)


@torch.no_grad()
def _scale_out(layer: nn.Module, s: torch.Tensor) -> None:
    """Divide output channel i of `layer` (weight and bias) by s_i."""
    layer.weight.div_(s.view((-1,) + (1,) * (layer.weight.dim() - 1)).to(layer.weight))
    if layer.bias is not None:
        layer.bias.div_(s.to(layer.bias))


@torch.no_grad()
def _scale_in(layer: nn.Module, s: torch.Tensor) -> None:
    """Multiply input channel i of `layer` by s_i."""
    w = layer.weight
    v = _grouped_view(layer, w.detach().clone())
    v = v * s.to(w).view(v.shape[0], 1, v.shape[2], 1)
    w.copy_(v.reshape(w.shape))


def _input_contribution(layer: nn.Module, c: torch.Tensor) -> torch.Tensor:
    """Σ_{i,k} W[o, i, k]·c_i per output channel o (what a constant input c contributes, no padding)."""
    v = _grouped_view(layer, layer.weight.detach()).sum(3)           # [g, O/g, I/g]
    return torch.bmm(v, c.to(v).view(v.shape[0], v.shape[2], 1)).reshape(-1)


def _ensure_bias(layer: nn.Module) -> None:
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], device=layer.weight.device,
                                              dtype=layer.weight.dtype))


# --------------------------------------------------------------------------------------------------
# chain discovery

@torch.no_grad()
def candidate_pairs(model: nn.Module, example_input: torch.Tensor) -> list[CLEPair]:
    """conv→(homogeneous acts)→conv candidates seen by module hooks, in execution order (unverified)."""
    calls: list[tuple[str, nn.Module, list[torch.Tensor], list[torch.Tensor]]] = []
    hooks = []
    for name, m in model.named_modules():
        if _is_layer(m) or next(m.children(), None) is None:
            hooks.append(m.register_forward_hook(
                lambda mod, args, kwargs, out, name=name: calls.append(
                    (name, mod, _tensors(args) + _tensors(kwargs), _tensors(out))),
                with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        model(example_input)   # `calls` holds every tensor alive until the analysis is over: ids stay unique
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    n_calls = Counter(name for name, *_ in calls)
    consumers: dict[int, list[int]] = {}
    for j, (_, _, ins, _) in enumerate(calls):
        for t in dict.fromkeys(id(t) for t in ins):
            consumers.setdefault(t, []).append(j)

    pairs = []
    for i, (name1, mod1, _, outs1) in enumerate(calls):
        if not _is_layer(mod1) or n_calls[name1] != 1 or len(outs1) != 1:
            continue
        t, pos, acts = outs1[0], i, []
        while True:
            after = [j for j in consumers.get(id(t), []) if j > pos]
            if not after:
                break
            j = after[0]
            name_j, mod_j, _, outs_j = calls[j]
            if isinstance(mod_j, HOMOGENEOUS_ACTS) and len(outs_j) == 1:
                if isinstance(mod_j, nn.ReLU6) and n_calls[name_j] != 1:
                    break                      # shared ReLU6: replacing it would reach outside the chain
                if outs_j[0] is t:             # in place (or Identity): later consumers see the activated tensor
                    pos, acts = j, acts + [name_j]
                    continue
                if len(after) != 1:
                    break                      # the pre-activation tensor branches
                t, pos, acts = outs_j[0], j, acts + [name_j]
                continue
            if (_is_layer(mod_j) and len(after) == 1 and n_calls[name_j] == 1 and name_j != name1
                    and _compatible(mod1, mod_j)):
                pairs.append(CLEPair(name1, name_j, tuple(acts)))
            break
    return pairs


def _replace_relu6(model: nn.Module, modules: dict[str, nn.Module], names: Iterable[str],
                   make=lambda relu6, name: nn.ReLU(inplace=relu6.inplace)) -> list[tuple[str, nn.Module]]:
    """Swap the ReLU6 modules among `names` for `make(relu6, name)` (default ReLU); return (name, original)."""
    swapped = []
    for n in names:
        m = modules[n]
        if isinstance(m, nn.ReLU6):
            set_submodule(model, n, make(m, n))
            swapped.append((n, m))
    return swapped


@torch.no_grad()
def find_cle_pairs(model: nn.Module, example_input: torch.Tensor, *, tol: float | None = None,
                   probe_dtype: torch.dtype | None = torch.float64, probe_samples: int | None = 2,
                   seed: int = 0) -> dict:
    """Candidates verified by outcome (see the module docstring). `model` is left unchanged.

    Returns {"kept": [CLEPair], "reverted": [(CLEPair, rel_error)], "candidates": int}.
    The probe runs on a `probe_dtype` copy (None: on the model itself, in its dtype, weights restored
    exactly afterwards) with the first `probe_samples` samples of `example_input` (None: all).
    `tol` defaults to 1e-5 in float64 and to 1e-3 otherwise: in float32 the rounding noise of a
    50-layer network reaches ~3e-5 and would reject valid pairs (observed on the proxy MobileNetV2),
    while a skipped residual branch changes the output by ~0.2–0.4 there.

    All candidates' ReLU6s are replaced by ReLU before one reference pass (a valid pair's scaling
    never reaches another activation, so this is the same test as replacing them pair by pair, at
    one forward pass per candidate); the ReLU6s of rejected pairs are put back afterwards.
    """
    was_training = model.training
    model.eval()
    x = example_input
    if probe_samples is not None and isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] > probe_samples:
        x = x[:probe_samples]
    probe = model
    if probe_dtype is not None and probe_dtype != next(model.parameters()).dtype:
        try:
            probe = copy.deepcopy(model).to(probe_dtype)
            x = x.to(probe_dtype) if x.is_floating_point() else x
        except Exception as e:  # noqa: BLE001 — a model that cannot be copied/cast is probed in place
            warnings.warn(f"CLE: probing in place in the model's dtype ({e})")
            probe, x = model, example_input
    elif probe_dtype is not None:
        probe = copy.deepcopy(model)      # already in probe_dtype: a copy keeps the model untouched
    if tol is None:
        tol = 1e-5 if next(probe.parameters()).dtype == torch.float64 else 1e-3
    swapped: dict[int, list[tuple[str, nn.Module]]] = {}
    try:
        candidates = candidate_pairs(probe, x)
        modules = dict(probe.named_modules())
        for k, p in enumerate(candidates):
            swapped[k] = _replace_relu6(probe, modules, p.acts)
        gen = torch.Generator().manual_seed(seed)
        y_ref = _flat_output(probe(x))
        kept, reverted = [], []
        for k, p in enumerate(candidates):
            l1, l2 = modules[p.conv1], modules[p.conv2]
            params = [t for t in (l1.weight, l1.bias, l2.weight) if t is not None]
            saved = [t.detach().clone() for t in params]
            s = torch.exp((torch.rand(l1.weight.shape[0], generator=gen, dtype=torch.float64) * 2 - 1) * math.log(4))
            try:
                _scale_out(l1, s)
                _scale_in(l2, s)
                err = _rel_error(_flat_output(probe(x)), y_ref)
            finally:
                for dst, src in zip(params, saved):
                    dst.copy_(src)
            if err <= tol:
                kept.append(p)
            else:
                reverted.append((p, err))
                for n, orig in swapped.pop(k):
                    set_submodule(probe, n, orig)
    finally:
        if probe is model:                # leave the model as it came
            for sw in swapped.values():
                for n, orig in sw:
                    set_submodule(model, n, orig)
        model.train(was_training)
    return {"kept": kept, "reverted": reverted, "candidates": len(candidates)}


# --------------------------------------------------------------------------------------------------
# BN statistics for high-bias absorption

@torch.no_grad()
def capture_bn_stats(model: nn.Module, example_input: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Per conv that feeds a BN: the pre-activation mean β and std |γ| (BN's affine parameters).

    Call BEFORE `fold_batchnorm`; pass the dict to `equalize(..., bn_stats=)` (which rescales it with
    the CLE scales) and then to `absorb_high_bias(..., bn_stats=)`.
    """
    modules = dict(model.named_modules())
    stats = {}
    for conv_name, bn_name in find_conv_bn_pairs(model, example_input):
        bn = modules[bn_name]
        n = bn.num_features
        dev = bn.running_mean.device if bn.running_mean is not None else None
        gamma = bn.weight.detach().abs().clone() if bn.affine else torch.ones(n, device=dev)
        beta = bn.bias.detach().clone() if bn.affine else torch.zeros(n, device=dev)
        stats[conv_name] = {"beta": beta.float(), "gamma": gamma.float()}
    return stats


# --------------------------------------------------------------------------------------------------
# entry points

@torch.no_grad()
def equalize(model: nn.Module, example_input: torch.Tensor, iterations: int = 100, *, tol: float | None = None,
             converge_tol: float = 1e-4, bn_stats: dict | None = None,
             probe_dtype: torch.dtype | None = torch.float64, probe_samples: int | None = 2, seed: int = 0,
             warn_tol: float = 1e-3, relu6: str = "clip") -> dict:
    """Cross-Layer Equalization of a BN-folded FP model, in place (see the module docstring).

    `relu6`: what becomes of a kept chain's ReLU6 — "clip" (default): a ChannelClip whose per-channel
    clip level follows the CLE scale, so the FP function is kept exactly; "relu": ReLU, as DFQ and
    AIMET do (changes the FP model).

    Returns a report: candidates / pairs kept / pairs reverted (with the probe's relative error),
    the ReLU6 modules replaced by ReLU, sweeps done and convergence, `rel_change_relu6` (output
    change on `example_input` due to ReLU6→ReLU alone) and `rel_error_vs_relu` (output change of the
    equalized model against the ReLU-replaced one: rounding only, e.g. 1e-6–3e-5 for the float32
    proxy MobileNetV2, ~1e-15 in float64; a warning is issued above `warn_tol`).
    `tol`, `probe_dtype`, `probe_samples`: the probe's (see `find_cle_pairs`; in float64, kept pairs
    show ~1e-15 and rejected ones ≥ 1e-2). `iterations`: at most this many sweeps over all pairs;
    stops when the largest |log s| of a sweep is below `converge_tol` (the proxy MobileNetV2 needs
    ~25 sweeps; they only touch weights). `bn_stats`: see `capture_bn_stats`, rescaled in place.
    """
    if relu6 not in RELU6_MODES:
        raise ValueError(f"relu6 must be one of {RELU6_MODES}, got {relu6!r}")
    was_training = model.training
    model.eval()
    try:
        found = find_cle_pairs(model, example_input, tol=tol, probe_dtype=probe_dtype,
                               probe_samples=probe_samples, seed=seed)
        kept: list[CLEPair] = found["kept"]
        modules = dict(model.named_modules())
        y_orig = _flat_output(model(example_input))
        acts = [a for p in kept for a in p.acts]
        if relu6 == "relu":
            swapped = _replace_relu6(model, modules, acts)
        else:                          # a clip over the output channels of the chain's conv1
            conv1_of = {a: modules[p.conv1].weight for p in kept for a in p.acts}
            swapped = _replace_relu6(model, modules, acts,
                                     lambda m, n: ChannelClip.like_relu6(conv1_of[n].shape[0], conv1_of[n]))
        y_ref = _flat_output(model(example_input)) if swapped else y_orig
        modules = dict(model.named_modules())

        sweeps, max_log_s = 0, 0.0
        for sweeps in range(1, iterations + 1):
            max_log_s = 0.0
            for p in kept:
                l1, l2 = modules[p.conv1], modules[p.conv2]
                r1, r2 = out_ranges(l1).double(), in_ranges(l2).double()
                ok = (r1 > 0) & (r2 > 0)
                s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1.0)), torch.ones_like(r1))
                _scale_out(l1, s)
                _scale_in(l2, s)
                for a in p.acts:              # relu6(x) / s = min(relu(x / s), 6 / s)
                    if isinstance(modules[a], ChannelClip):
                        modules[a].upper.div_(s.to(modules[a].upper))
                if bn_stats is not None and p.conv1 in bn_stats:
                    for k in ("beta", "gamma"):
                        bn_stats[p.conv1][k] = bn_stats[p.conv1][k] / s.to(bn_stats[p.conv1][k])
                max_log_s = max(max_log_s, float(s.log().abs().max())) if s.numel() else max_log_s
            if max_log_s < converge_tol:
                break
        y = _flat_output(model(example_input))
    finally:
        model.train(was_training)
    report = {
        "candidates": found["candidates"],
        "pairs_kept": len(kept),
        "pairs_reverted": len(found["reverted"]),
        "pairs": [asdict(p) for p in kept],
        "reverted": [dict(asdict(p), rel_error=e) for p, e in found["reverted"]],
        "relu6_replaced": len(swapped),
        "relu6_mode": relu6,
        "relu6_names": [n for n, _ in swapped],
        "sweeps": sweeps,
        "converged": max_log_s < converge_tol,
        "final_max_log_scale": max_log_s,
        "rel_change_relu6": _rel_error(y_ref, y_orig),
        "rel_error_vs_relu": _rel_error(y, y_ref),
    }
    if report["rel_error_vs_relu"] > warn_tol:
        warnings.warn(f"CLE changed the float32 output by {report['rel_error_vs_relu']:.2e} (relative) "
                      f"beyond ReLU6→ReLU; expected rounding noise only")
    return report


@torch.no_grad()
def _preactivation_stats(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> dict:
    """Per-channel mean and std (over batch and space) of the outputs of the layers `names`."""
    modules = dict(model.named_modules())
    acc = {n: [0.0, 0.0, 0] for n in names}

    def hook(mod, args, out, name):   # runs before any in-place activation touches `out`
        o = out.detach().double()
        o = o.movedim(1, -1) if isinstance(mod, nn.Conv2d) else o
        o = o.reshape(-1, o.shape[-1])
        a = acc[name]
        a[0], a[1], a[2] = a[0] + o.sum(0), a[1] + (o * o).sum(0), a[2] + o.shape[0]

    hooks = [modules[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in names]
    try:
        for xb in batches:
            model(xb)
    finally:
        for h in hooks:
            h.remove()
    stats = {}
    for n, (s1, s2, cnt) in acc.items():
        if cnt:
            mean = s1 / cnt
            stats[n] = (mean, (s2 / cnt - mean * mean).clamp_min(0).sqrt())
    return stats


@torch.no_grad()
def absorb_high_bias(model: nn.Module, example_input: torch.Tensor, *, bn_stats: dict | None = None,
                     calib_batches: Iterable[torch.Tensor] | None = None, num_std: float = 3.0,
                     pairs: list | None = None, tol: float | None = None,
                     probe_dtype: torch.dtype | None = torch.float64) -> dict:
    """High-bias absorption through ReLU/LeakyReLU for every kept conv→act→conv chain, in place.

    c = max(0, β − num_std·σ) per channel of conv1's output, from `bn_stats` (β, |γ|; see
    `capture_bn_stats`) when it has conv1, else from the per-channel mean/std of conv1's output over
    `calib_batches` (default: `[example_input]`). `pairs`: the chains from `equalize`'s report
    (`report["pairs"]`) to skip re-discovery. Chains whose activation is still ReLU6 are skipped.
    """
    was_training = model.training
    model.eval()
    try:
        if pairs is None:
            pairs = find_cle_pairs(model, example_input, tol=tol, probe_dtype=probe_dtype)["kept"]
        pairs = [_as_pair(p) for p in pairs]
        modules = dict(model.named_modules())
        chains, skipped_relu6 = [], 0
        for p in pairs:
            acts = [modules[a] for a in p.acts]
            if any(isinstance(a, nn.ReLU6) for a in acts):
                skipped_relu6 += 1
            elif any(isinstance(a, RECTIFIERS) for a in acts):
                chains.append(p)
        y_before = _flat_output(model(example_input))
        need = [p.conv1 for p in chains if bn_stats is None or p.conv1 not in bn_stats]
        batches = list(calib_batches) if calib_batches is not None else [example_input]
        empirical = _preactivation_stats(model, need, batches) if need else {}
        absorbed, channels, total = 0, 0, 0.0
        per_layer = {}
        for p in chains:
            if bn_stats is not None and p.conv1 in bn_stats:
                mean, std, source = bn_stats[p.conv1]["beta"], bn_stats[p.conv1]["gamma"].abs(), "bn"
            elif p.conv1 in empirical:
                (mean, std), source = empirical[p.conv1], "empirical"
            else:
                continue
            l1, l2 = modules[p.conv1], modules[p.conv2]
            c = (mean.double() - num_std * std.double()).clamp_min(0)
            clips = [modules[a] for a in p.acts if isinstance(modules[a], ChannelClip)]
            for clip in clips:            # c above the clip level would push the level below 0
                c = torch.minimum(c, clip.upper.double())
            if not bool((c > 0).any()):
                continue
            for clip in clips:            # min(relu(x − c), u − c) = min(relu(x), u) − c for x ≥ c
                clip.upper.sub_(c.to(clip.upper))
            _ensure_bias(l1)
            _ensure_bias(l2)
            l2.bias.add_(_input_contribution(l2, c.to(l2.weight)).to(l2.bias))
            l1.bias.sub_(c.to(l1.bias))
            if bn_stats is not None and p.conv1 in bn_stats:
                bn_stats[p.conv1]["beta"] = bn_stats[p.conv1]["beta"] - c.to(bn_stats[p.conv1]["beta"])
            absorbed += 1
            channels += int((c > 0).sum())
            total += float(c.sum())
            per_layer[p.conv1] = {"source": source, "channels": int((c > 0).sum()), "mean_c": float(c.mean())}
        y_after = _flat_output(model(example_input))
    finally:
        model.train(was_training)
    return {"chains": len(chains), "absorbed": absorbed, "channels": channels, "total_c": total,
            "skipped_relu6": skipped_relu6, "per_layer": per_layer,
            "rel_change": _rel_error(y_after, y_before)}
