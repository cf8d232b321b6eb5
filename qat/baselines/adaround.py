"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization"),
with AIMET's defaults (SPEC §7), as a post-training step for Table V (after ScaleGrad+EAD training).

Per quantized low-bit layer, in execution order, with the step size s fixed:

    W̃ = s · clamp(floor(W/s) + h(V), qmin, qmax),   h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1),  ζ = 1.1, γ = −0.1
    loss = ‖f(W x̂) − f(W̃ x̂)‖²  +  λ · Σ (1 − |2h(V) − 1|^β)

- V starts so that h(V) equals the fractional part W/s − floor(W/s) (AIMET's warm start: the soft
  weight starts at the latent weight itself, i.e. rounding "proportional" to the distance).
- λ = 0.01, Adam lr 1e-3 on V, batches of 32 cached samples, `iterations` steps (AIMET: 10 000); the
  regulariser is off for the first 20% of the iterations (warm start), then β is cosine-annealed
  20 → 2 (AIMET's `_compute_beta`).
- Reconstruction loss as AIMET's `compute_recon_loss`: squared norm over the channel dim (dim 1),
  mean over the rest (batch, spatial positions).
- x̂: the layer's input in the quantized model whose earlier layers are already AdaRounded, passed
  through the layer's own (enabled, fixed) input quantizer; collected with a forward pre-hook over
  `task.calib_batches()` (at most `num_samples` samples are cached). The target is the same layer with
  its latent (unrounded) weight W on the same x̂. After QAT there is no separate FP model whose
  activations would be meaningful targets (AIMET's target is the FP model's output), so the latent
  weights are the reference; docs/DEVIATIONS.md.
- f: the activation module that consumes the layer's output directly (ReLU/ReLU6/CLE's ChannelClip/…; found by a traced
  forward), as AIMET does; identity when the output goes elsewhere first (a residual add, a functional
  activation inside a block's forward, a linear bottleneck).
- At the end h is hard-rounded (h = 1 where V ≥ 0, i.e. where h(V) ≥ 0.5) and the result is written
  into the latent weights, W ← s·code, so the layer's normal quantizer reproduces it exactly.
  Frozen codes (qat.freeze) are first written into the latent weights and then dropped: AdaRound
  decides every rounding of the layers it processes.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..functional import STEP_EPS
from ..prepare.channel_clip import ChannelClip
from ..prepare.hooked_forward import hooked_eval_forward
from ..modules import QuantConv2d, low_bit_layers
from ..recipe_registry import Part

ZETA = 1.1
GAMMA = -0.1
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU, nn.ELU, nn.Mish,
               ChannelClip)  # CLE's per-channel ReLU6


def rectified_sigmoid(v: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """h(V) = clamp(σ(V)·(ζ − γ) + γ, 0, 1) ∈ [0, 1]."""
    return torch.clamp(torch.sigmoid(v) * (zeta - gamma) + gamma, 0.0, 1.0)


def init_v(rest: torch.Tensor, zeta: float = ZETA, gamma: float = GAMMA) -> torch.Tensor:
    """V with h(V) = rest for rest ∈ [0, 1) (the inverse of the rectified sigmoid on its open part)."""
    return -torch.log((zeta - gamma) / (rest - gamma) - 1.0)


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """Σ (1 − |2h − 1|^β): 0 when every h ∈ {0, 1}, 1 per element at h = 0.5."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def beta_schedule(iteration: int, iterations: int, warm_start: float = 0.2,
                  beta_range: tuple[float, float] = (20.0, 2.0)) -> float | None:
    """β at `iteration` (0-based): None during the warm start (no regulariser), then cosine
    start → end over the remaining iterations (AIMET's `_compute_beta`)."""
    start_iter = warm_start * iterations
    if iteration < start_iter:
        return None
    start, end = beta_range
    rel = (iteration - start_iter) / max(1e-12, iterations - start_iter)
    return end + 0.5 * (start - end) * (1.0 + math.cos(rel * math.pi))


def reconstruction_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖out − target‖² over the channel dim (dim 1), mean over the other dims (AIMET)."""
    return (out - target).pow(2).sum(1).mean()


def _layer_output(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's pre-activation output for input x (already quantized) and `weight`; bias fixed."""
    bias = None if layer.bias is None else layer.bias.detach()
    if isinstance(layer, QuantConv2d):
        return layer._conv_forward(x, weight, bias)
    return F.linear(x, weight, bias)


class _StopForward(Exception):
    pass


@torch.no_grad()
def following_activations(model: nn.Module, example_input: torch.Tensor, layers: list[nn.Module]) -> dict:
    """{layer: activation module} for each layer whose output tensor is the direct input of an
    activation module (found on one eval-mode forward)."""
    outputs: dict[int, nn.Module] = {}
    keep = []   # hold the outputs so that their ids stay unique during the pass
    found: dict[nn.Module, nn.Module] = {}
    hooks = []

    def on_output(mod, inp, out):
        outputs[id(out)] = mod
        keep.append(out)

    def on_act_input(mod, inp):
        producer = outputs.get(id(inp[0])) if inp else None
        if producer is not None and producer not in found:
            found[producer] = mod

    for layer in layers:
        hooks.append(layer.register_forward_hook(on_output))
    for m in model.modules():
        if isinstance(m, ACTIVATIONS):
            hooks.append(m.register_forward_pre_hook(on_act_input))
    hooked_eval_forward(model, example_input, hooks)
    return found


def _non_inplace(act: nn.Module | None) -> nn.Module | None:
    if act is None:
        return None
    act = copy.deepcopy(act)
    if hasattr(act, "inplace"):
        act.inplace = False
    return act


@torch.no_grad()
def collect_inputs(model: nn.Module, layer: nn.Module, inputs, num_samples: int) -> torch.Tensor:
    """The layer's quantized inputs x̂ = input_quant(x) on up to `num_samples` samples of `inputs`
    (model input tensors), in eval mode; each forward stops at the layer."""
    chunks, count = [], 0

    def grab(mod, inp):
        chunks.append(mod.input_quant(inp[0]).detach())
        raise _StopForward

    handle = layer.register_forward_pre_hook(grab)
    was_training = model.training
    model.eval()
    try:
        for x in inputs:
            seen = len(chunks)
            try:
                model(x)
            except _StopForward:
                pass
            count += sum(c.shape[0] for c in chunks[seen:])
            if count >= num_samples:
                break
    finally:
        handle.remove()
        model.train(was_training)
    if not chunks:
        raise RuntimeError("AdaRound: no calibration batch reached the layer")
    return torch.cat(chunks)[:num_samples]


@torch.no_grad()
def _materialize_frozen(layer: nn.Module) -> None:
    wq = layer.weight_quant
    if wq.afw is not None:
        raise RuntimeError("AdaRound: the layer still has AFW offsets installed")
    if wq.frozen is not None:
        if bool(wq.frozen.mask.any()):
            frozen_w = wq.step.clamp_min(STEP_EPS) * wq.frozen.codes
            layer.weight.copy_(torch.where(wq.frozen.mask, frozen_w, layer.weight))
        wq.frozen = None


def adaround_layer(layer: nn.Module, inputs: torch.Tensor, iterations: int = 10000, *, activation=None,
                   reg: float = 0.01, lr: float = 1e-3, batch_size: int = 32, warm_start: float = 0.2,
                   beta_range: tuple[float, float] = (20.0, 2.0), zeta: float = ZETA, gamma: float = GAMMA,
                   eval_samples: int = 256, seed: int = 0, progress: bool = False) -> dict:
    """AdaRound one quantized layer on its cached quantized inputs; writes W ← s·code in place.
    Returns reconstruction errors (nearest vs AdaRound, hard-rounded, on the first `eval_samples`
    samples) and how many codes differ from nearest rounding."""
    _materialize_frozen(layer)
    wq = layer.weight_quant
    act = _non_inplace(activation) or nn.Identity()
    w = layer.weight.detach().clone()
    s = wq.step.detach().clamp_min(STEP_EPS)
    floor = torch.floor(w / s)
    v = nn.Parameter(init_v((w / s - floor).clamp(0.0, 1.0), zeta, gamma))
    nearest = torch.clamp(torch.round(w / s), wq.qmin, wq.qmax)
    n = inputs.shape[0]
    probe = inputs[:eval_samples]

    def recon_of(weight):
        with torch.no_grad():
            return float(reconstruction_loss(act(_layer_output(layer, probe, weight)),
                                             act(_layer_output(layer, probe, w))))

    before = recon_of(s * nearest)
    optimizer = torch.optim.Adam([v], lr=lr)
    # batches drawn from a dedicated generator: reproducible, and identical on every DDP rank
    generator = torch.Generator(device=inputs.device)
    generator.manual_seed(seed)
    steps = range(iterations)
    if progress:
        steps = tqdm(steps, desc="AdaRound", leave=False)
    for it in steps:
        if n > batch_size:
            idx = torch.randperm(n, device=inputs.device, generator=generator)[:batch_size]
        else:
            idx = slice(None)
        x = inputs[idx]
        with torch.no_grad():
            target = act(_layer_output(layer, x, w))
        h = rectified_sigmoid(v, zeta, gamma)
        w_soft = s * torch.clamp(floor + h, wq.qmin, wq.qmax)
        loss = reconstruction_loss(act(_layer_output(layer, x, w_soft)), target)
        beta = beta_schedule(it, iterations, warm_start, beta_range)
        if beta is not None:
            loss = loss + reg * rounding_regularizer(h, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        codes = torch.clamp(floor + (v >= 0).to(floor.dtype), wq.qmin, wq.qmax)
        soft_fraction = float(((rectified_sigmoid(v, zeta, gamma) > 0) & (rectified_sigmoid(v, zeta, gamma) < 1))
                              .float().mean())
        layer.weight.copy_(s * codes)
    after = recon_of(s * codes)
    return {"recon_nearest": before, "recon_adaround": after,
            "changed": int((codes != nearest).sum()), "soft_fraction": soft_fraction}


class AdaRoundStep:
    """Post step: AdaRound every quantized layer with ≤ `max_bits` weights, in order; then evaluate."""
    name = "adaround"

    def __init__(self, iterations: int = 10000, reg: float = 0.01, lr: float = 1e-3, batch_size: int = 32,
                 warm_start: float = 0.2, beta_range: tuple[float, float] = (20.0, 2.0),
                 num_samples: int = 1024, max_bits: int = 4, use_activation: bool = True, seed: int = 0):
        if iterations < 1:
            raise ValueError(f"AdaRound iterations must be at least 1, got {iterations}")
        self.iterations, self.reg, self.lr, self.batch_size = iterations, reg, lr, batch_size
        self.warm_start, self.beta_range, self.num_samples = warm_start, beta_range, num_samples
        self.max_bits, self.use_activation, self.seed = max_bits, use_activation, seed

    def run(self, model: nn.Module, task) -> dict:
        layers = [layer for _, layer in low_bit_layers(model, self.max_bits)]
        batches = task.calib_batches()
        if not isinstance(batches, (list, tuple)):
            batches = list(batches)
        if not batches:
            raise ValueError("AdaRound: the task gave no calibration batches")
        inputs = [task.inputs(b) for b in batches]
        acts = following_activations(model, inputs[0], layers) if self.use_activation else {}
        requires = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        totals = {"recon_nearest": 0.0, "recon_adaround": 0.0, "changed": 0}
        try:
            for i, layer in enumerate(tqdm(layers, desc="AdaRound layers", leave=False)):
                cached = collect_inputs(model, layer, inputs, self.num_samples)
                out = adaround_layer(layer, cached, self.iterations, activation=acts.get(layer), reg=self.reg,
                                     lr=self.lr, batch_size=self.batch_size, warm_start=self.warm_start,
                                     beta_range=self.beta_range, seed=self.seed + i)
                del cached
                for k in totals:
                    totals[k] += out[k]
        finally:
            for p, r in requires.items():
                p.requires_grad_(r)
        metrics = task.evaluate(model)
        return {"adaround/layers": len(layers), "adaround/with_activation": len(acts),
                "adaround/changed_codes": totals["changed"],
                "adaround/recon_nearest_sum": totals["recon_nearest"],
                "adaround/recon_sum": totals["recon_adaround"],
                **{f"adaround/{k}": v for k, v in metrics.items()}}


ADAROUND = Part("adaround", lambda m, bits, tau: AdaRoundStep(iterations=m.adaround_iterations), ("adaround_iterations",))
