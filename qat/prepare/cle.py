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
outcome** on a `probe_dtype` copy of the model (default float64; the training pipeline probes in float32) and
the first two samples of the example batch: the ReLU6s of all candidates become ChannelClips at level 6
(the same function), one reference pass records the output and the input of every leaf-module call, and
then, candidate by candidate, a random per-channel scaling by powers of two (2^k, k ∈ {−2, −1, 1, 2}) is
applied to the pair (its clips follow), every recorded input except those inside the pair (the acts' and
conv2's) and the output are compared with the reference, and the weights are restored. Scaling by powers of
two is exact in floating point, so a valid pair leaves all of them bit-identical in any dtype; a change above
`tol` (`function_check.rounding_tol`) means the middle tensor is used elsewhere (≥ 1 on the proxy models): the
pair is rejected ("reverted") and its ReLU6s are put back. Comparing every module input, not the output alone,
matters: on the smoke MobileNetV2 (tests/fixtures/cle-smoke-mobilenetv2-fp.pt) the ReLU6 after conv_head
saturated (every value ≤ 0 or ≥ 6) once the probe had made the chains' ReLU6s ReLUs, so the output did not move when
`blocks.1.0.conv_pwl → blocks.1.1.conv_pw` (whose middle tensor also feeds block 1.1's residual addition) was
rescaled; the pair was kept and CLE changed the output by 100% (top-1 66.80 → 12.50). A random probe (rather
than the data-driven CLE scale, which may be close to 1 on some channels) tests the structural invariance
itself. After equalization the model is compared once more with its ReLU6-replaced self
(`rel_error_vs_relu`, rounding only); above `rounding_tol` `equalize` raises `PrologueError` naming the pair
whose CLE scale alone changes the output most. A branch that outputs exact zeros (timm's zero-initialised last
BN of a residual block, before training) is invisible to the probe, but its ranges are 0, so CLE leaves it
unscaled (s = 1) and no bias is absorbed from it.

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
from .function_check import PrologueError, flat_output, rel_error, rounding_tol, tensors

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

def _leaf_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose calls the chain analysis sees: layers and modules without children."""
    return [(name, m) for name, m in model.named_modules() if _is_layer(m) or next(m.children(), None) is None]


@torch.no_grad()
def candidate_pairs(model: nn.Module, example_input: torch.Tensor) -> list[CLEPair]:
    """conv→(homogeneous acts)→conv candidates seen by module hooks, in execution order (unverified)."""
    calls: list[tuple[str, nn.Module, list[torch.Tensor], list[torch.Tensor]]] = []
    hooks = [m.register_forward_hook(
        lambda mod, args, kwargs, out, name=name: calls.append(
            (name, mod, tensors(args) + tensors(kwargs), tensors(out))),
        with_kwargs=True) for name, m in _leaf_modules(model)]
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


def _as_relu6_clip(modules: dict[str, nn.Module], conv1: str):
    """A ChannelClip at level 6 over conv1's output channels: the ReLU6's own function, rescalable."""
    return lambda relu6, name: ChannelClip.like_relu6(modules[conv1].weight.shape[0], modules[conv1].weight)


@torch.no_grad()
def _rescale_pair(modules: dict[str, nn.Module], p: CLEPair, s: torch.Tensor) -> None:
    """Divide conv1's output channels by s, multiply conv2's input channels by s; clips in between follow."""
    _scale_out(modules[p.conv1], s)
    _scale_in(modules[p.conv2], s)
    for a in p.acts:                      # relu6(x) / s = min(relu(x / s), 6 / s)
        if isinstance(modules[a], ChannelClip):
            modules[a].upper.div_(s.to(modules[a].upper))


class _InputTrace:
    """The inputs of every leaf-module call of one forward pass on `x`, and the output, kept as a reference that
    later passes are compared with.

    Module inputs show what the output alone may hide: a rescaled tensor that also reaches a residual addition
    changes the next module's input by O(1) even when a saturated activation further on (a ReLU6 whose inputs
    all lie below 0 or above 6) leaves the output unchanged — which let such a pair through on the smoke
    MobileNetV2 (tests/fixtures/cle-smoke-mobilenetv2-fp.pt).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor):
        self.model, self.x = model, x
        self.calls: list[tuple[str, list[torch.Tensor]]] = []
        self.output = self._run(lambda i, name, ins: self.calls.append((name, [t.clone() for t in ins])))

    def _run(self, on_call) -> torch.Tensor:
        count = [0]

        def pre_hook(mod, args, kwargs, name):   # before the call: in-place modules have not changed it yet
            on_call(count[0], name, [t.detach() for t in tensors(args) + tensors(kwargs) if t.is_floating_point()])
            count[0] += 1

        hooks = [m.register_forward_pre_hook(lambda mod, a, kw, name=name: pre_hook(mod, a, kw, name), with_kwargs=True)
                 for name, m in _leaf_modules(self.model)]   # the model's modules now: swaps are undone
        try:
            y = flat_output(self.model(self.x))
        finally:
            for h in hooks:
                h.remove()
        self.n_run = count[0]
        return y

    def index(self, name: str) -> list[int]:
        """The call indices of module `name`."""
        return [i for i, (n, _) in enumerate(self.calls) if n == name]

    def change(self, skip: set[int]) -> tuple[float, str]:
        """The largest relative change, against the reference, of a module input (calls in `skip` excepted) or
        of the output, and where it is."""
        worst: list = [0.0, "the output"]

        def compare(i, name, ins):
            if i in skip:
                return
            if i >= len(self.calls) or self.calls[i][0] != name or len(ins) != len(self.calls[i][1]):
                err = math.inf                  # another sequence of calls: the model is not the same function
            else:
                err = max((rel_error(t, r) for t, r in zip(ins, self.calls[i][1])), default=0.0)
            if err > worst[0]:
                worst[:] = [err, f"the input of {name}"]

        y = self._run(compare)
        err = rel_error(y, self.output) if self.n_run == len(self.calls) else math.inf
        if err > worst[0]:
            worst[:] = [err, "the output"]
        return worst[0], worst[1]


@torch.no_grad()
def find_cle_pairs(model: nn.Module, example_input: torch.Tensor, *, tol: float | None = None,
                   probe_dtype: torch.dtype | None = torch.float64, probe_samples: int | None = 2,
                   seed: int = 0) -> dict:
    """Candidates verified by outcome (see the module docstring). `model` is left unchanged.

    Returns {"kept": [CLEPair], "reverted": [(CLEPair, rel_error)], "where": {(conv1, conv2): str},
    "candidates": int}. The probe runs on a `probe_dtype` copy (None: on the model itself, in its dtype, weights
    restored exactly afterwards) with the first `probe_samples` samples of `example_input` (None: all).
    `tol` defaults to `rounding_tol` of the probe's dtype (1.2e-3 in float32, 2.2e-12 in float64): the
    power-of-two scaling leaves the inputs and the output of a valid pair unchanged (0 on every proxy model),
    a pair whose middle tensor is also used elsewhere changes them by ≥ 1 (proxy models, smoke MobileNetV2).

    Each candidate's ReLU6s become ChannelClips at level 6 (the same function) which the probe rescales with
    the pair, as equalization will; the ReLU6s of rejected pairs are put back afterwards.
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
        tol = rounding_tol(next(probe.parameters()).dtype)
    swapped: dict[int, list[tuple[str, nn.Module]]] = {}
    try:
        candidates = candidate_pairs(probe, x)
        modules = dict(probe.named_modules())
        for k, p in enumerate(candidates):
            swapped[k] = _replace_relu6(probe, modules, p.acts, _as_relu6_clip(modules, p.conv1))
        modules = dict(probe.named_modules())
        trace = _InputTrace(probe, x)
        gen = torch.Generator().manual_seed(seed)
        kept, reverted, where = [], [], {}
        for k, p in enumerate(candidates):
            i1, (i2,) = trace.index(p.conv1)[0], trace.index(p.conv2)
            inside = {i for a in p.acts for i in trace.index(a) if i1 < i < i2} | {i2}   # rescaled by design
            tensors_of_pair = [modules[p.conv1].weight, modules[p.conv1].bias, modules[p.conv2].weight] + [
                modules[a].upper for a in p.acts if isinstance(modules[a], ChannelClip)]
            saved = [(t, t.detach().clone()) for t in tensors_of_pair if t is not None]
            exponent = torch.tensor([-2.0, -1.0, 1.0, 2.0], dtype=torch.float64)[
                torch.randint(4, (modules[p.conv1].weight.shape[0],), generator=gen)]
            s = 2.0 ** exponent
            try:
                _rescale_pair(modules, p, s)
                err, where[(p.conv1, p.conv2)] = trace.change(inside)
            finally:
                for dst, src in saved:
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
    return {"kept": kept, "reverted": reverted, "where": where, "candidates": len(candidates)}


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
             check_tol: float | None = None, relu6: str = "clip") -> dict:
    """Cross-Layer Equalization of a BN-folded FP model, in place (see the module docstring).

    `relu6`: what becomes of a kept chain's ReLU6 — "clip" (default): a ChannelClip whose per-channel
    clip level follows the CLE scale, so the FP function is kept exactly; "relu": ReLU, as DFQ and
    AIMET do (changes the FP model).

    Returns a report: candidates / pairs kept / pairs reverted (with the probe's relative error),
    the ReLU6 modules replaced, sweeps done and convergence, `rel_change_relu6` (output change on
    `example_input` due to the ReLU6 replacement alone: 0 for "clip") and `rel_error_vs_relu` (output
    change of the equalized model against the ReLU6-replaced one: rounding only, 4e-7 on the float32 smoke
    MobileNetV2, up to 7.5e-5 on the proxy models with random BN statistics, ~1e-15 in float64).
    Raises `PrologueError` (a ValueError) when `rel_error_vs_relu` exceeds `check_tol` (default `rounding_tol`
    of the model's dtype), naming the pair whose rescaling alone changes the output most; the model is then
    left as it came.
    `tol`, `probe_dtype`, `probe_samples`: the probe's (see `find_cle_pairs`). `iterations`: at most this many
    sweeps over all pairs; stops when the largest |log s| of a sweep is below `converge_tol` (the proxy
    MobileNetV2 needs ~25 sweeps; they only touch weights). `bn_stats`: see `capture_bn_stats`, rescaled in place.
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
        y_orig = flat_output(model(example_input))
        if relu6 == "relu":
            swapped = [sw for p in kept for sw in _replace_relu6(model, modules, p.acts)]
        else:                          # a clip over the output channels of the chain's conv1
            swapped = [sw for p in kept
                       for sw in _replace_relu6(model, modules, p.acts, _as_relu6_clip(modules, p.conv1))]
        y_ref = flat_output(model(example_input)) if swapped else y_orig
        modules = dict(model.named_modules())
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        bn_before = copy.deepcopy(bn_stats)

        total_s = [torch.ones(modules[p.conv1].weight.shape[0], dtype=torch.float64) for p in kept]
        sweeps, max_log_s = 0, 0.0
        for sweeps in range(1, iterations + 1):
            max_log_s = 0.0
            for k, p in enumerate(kept):
                r1, r2 = out_ranges(modules[p.conv1]).double(), in_ranges(modules[p.conv2]).double()
                ok = (r1 > 0) & (r2 > 0)
                s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1.0)), torch.ones_like(r1))
                _rescale_pair(modules, p, s)
                total_s[k] = total_s[k] * s.cpu()
                if bn_stats is not None and p.conv1 in bn_stats:
                    for key in ("beta", "gamma"):
                        bn_stats[p.conv1][key] = bn_stats[p.conv1][key] / s.to(bn_stats[p.conv1][key])
                max_log_s = max(max_log_s, float(s.log().abs().max())) if s.numel() else max_log_s
            if max_log_s < converge_tol:
                break
        y = flat_output(model(example_input))
        err = rel_error(y, y_ref)
        if check_tol is None:
            check_tol = rounding_tol(next(model.parameters()).dtype)
        if err > check_tol:
            culprits = _blame(model, modules, kept, total_s, before, example_input, y_ref)
            model.load_state_dict(before)
            for n, orig in swapped:
                set_submodule(model, n, orig)
            if bn_stats is not None:
                bn_stats.update(bn_before)
            (p, e), *_ = culprits
            raise PrologueError(
                f"CLE changed the FP output by {err:.2e} (relative to max|output|; rounding allows {check_tol:.1e}): "
                f"the layer pair {p.conv1} → {p.conv2} (through {', '.join(p.acts) or 'nothing'}) alone changes "
                f"it by {e:.2e} — its middle tensor is probably used outside the pair. Turn CLE off (--no-cle) "
                f"for this model")
    finally:
        model.train(was_training)
    return {
        "candidates": found["candidates"],
        "pairs_kept": len(kept),
        "pairs_reverted": len(found["reverted"]),
        "pairs": [asdict(p) for p in kept],
        "reverted": [dict(asdict(p), rel_error=e, where=found["where"][(p.conv1, p.conv2)])
                     for p, e in found["reverted"]],
        "relu6_replaced": len(swapped),
        "relu6_mode": relu6,
        "relu6_names": [n for n, _ in swapped],
        "sweeps": sweeps,
        "converged": max_log_s < converge_tol,
        "final_max_log_scale": max_log_s,
        "rel_change_relu6": rel_error(y_ref, y_orig),
        "rel_error_vs_relu": err,
    }


@torch.no_grad()
def _blame(model: nn.Module, modules: dict[str, nn.Module], pairs: list[CLEPair], scales: list[torch.Tensor],
           before: dict, x: torch.Tensor, y_ref: torch.Tensor) -> list[tuple[CLEPair, float]]:
    """(pair, output change when only that pair gets its CLE scale), largest change first; restores `before`."""
    changes = []
    for p, s in zip(pairs, scales):
        model.load_state_dict(before)
        _rescale_pair(modules, p, s)
        changes.append((p, rel_error(flat_output(model(x)), y_ref)))
    model.load_state_dict(before)
    return sorted(changes, key=lambda pe: -pe[1])


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
        y_before = flat_output(model(example_input))
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
        y_after = flat_output(model(example_input))
    finally:
        model.train(was_training)
    return {"chains": len(chains), "absorbed": absorbed, "channels": channels, "total_c": total,
            "skipped_relu6": skipped_relu6, "per_layer": per_layer,
            "rel_change": rel_error(y_after, y_before)}
