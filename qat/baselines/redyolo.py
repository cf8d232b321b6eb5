"""RedYolo (Gupta & Asthana, WACV 2024; SPEC §7): EMA of latent weights and step sizes, evaluated on
the EMA copy, then QC ("quantization correction").

EMA (`EMAHook`), Ultralytics ModelEMA style: after every optimizer step, on a deep copy of the model,

    θ_ema ← d·θ_ema + (1 − d)·θ,     d(u) = decay · (1 − exp(−u / ramp)),   u = updates so far (1, 2, …)

for every floating-point parameter and buffer (latent weights, biases, weight and activation step
sizes); non-float buffers are copied, not averaged. d starts at ≈0 (the copy follows the model) and
approaches `decay` = 0.9999 with time constant `ramp` = 2000 updates. The copy is only ever used in
eval mode: it carries no oscillation tracker (trackers update in training mode only, and the EMA copy
must not own tracking state), and it shares the live model's frozen codes when a FreezeHook is used.

How a trainer uses it: `eval_model()` returns the EMA copy, so per-epoch validation measures it; at
the end of training, before the post steps, the final model is the EMA copy:
`hook.copy_to(model)` (= `model.load_state_dict(hook.ema_state())`), after which QC (and the
checkpoint) operate on `model`. `state_dict()` / `load_state_dict()` carry the EMA copy for resuming.

QC (`QuantizationCorrectionStep`): a per-output-channel affine γ⊙h + β on the output h of every
quantized conv (identity init: γ = 1, β = 0), trained with Adam (lr 1e-3; the paper's value is
unknown, so it is a flag) for `epochs` passes over the calibration batches with every other parameter
frozen. With BN folded (our pipeline) this is a per-channel FP scale and bias on the conv output (the
paper's QC sits before a BN whose statistics are fixed: the same function class). It is a child
module `qc` of each conv plus a forward hook, so it stays part of the model for evaluation,
`torch.save(model)` and state dicts (keys `<conv>.qc.gamma`, `<conv>.qc.beta`); to load such a state
dict into a freshly built model, call `attach_qc(model)` first (`has_qc(state_dict)` tells when).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..hooks import TrainingHook, TrainState
from ..modules import QuantConv2d, QuantLinear, quant_layers
from ..recipe_registry import Part, Recipe, register_recipe


# --------------------------------------------------------------------------------------------- EMA
def ema_decay(updates: int, decay: float = 0.9999, ramp: float = 2000.0) -> float:
    """d(u) = decay·(1 − exp(−u/ramp)) (Ultralytics ModelEMA)."""
    return decay * (1.0 - math.exp(-updates / ramp))


def make_ema_copy(model: nn.Module) -> nn.Module:
    """A detached eval-mode deep copy of `model` without oscillation trackers."""
    ema = copy.deepcopy(model)
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
        p.grad = None
    for _, layer in quant_layers(ema):
        layer.weight_quant.tracker = None
    return ema


class EMAHook(TrainingHook):
    """EMA of every float parameter/buffer (weights, biases, steps); evaluation on the EMA copy."""

    def __init__(self, decay: float = 0.9999, ramp: float = 2000.0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if ramp <= 0:
            raise ValueError(f"EMA ramp must be positive, got {ramp}")
        self.decay, self.ramp = decay, ramp
        self.ema: nn.Module | None = None
        self.model: nn.Module | None = None
        self.updates = 0
        self._pending: dict | None = None
        self._pairs = None

    def decay_at(self, updates: int) -> float:
        return ema_decay(updates, self.decay, self.ramp)

    def on_train_start(self, state: TrainState) -> None:
        self.model = state.model
        if self.ema is None:
            self.ema = make_ema_copy(state.model)
        self._pairs = None
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.load_state_dict(pending)

    def _tensor_pairs(self):
        """([ema float], [model float], [(ema other, model other)]) matched by name."""
        if self._pairs is None:
            live = dict(self.model.named_parameters())
            live.update(dict(self.model.named_buffers()))
            ema_f, live_f, other = [], [], []
            for name, t in list(self.ema.named_parameters()) + list(self.ema.named_buffers()):
                src = live[name]
                if t.dtype.is_floating_point:
                    ema_f.append(t)
                    live_f.append(src)
                else:
                    other.append((t, src))
            self._pairs = (ema_f, live_f, other)
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> float:
        """One EMA update from `model` (default: the training model); returns the decay used."""
        if model is not None and model is not self.model:
            self.model, self._pairs = model, None
        self.updates += 1
        d = self.decay_at(self.updates)
        ema_f, live_f, other = self._tensor_pairs()
        if ema_f:
            torch._foreach_lerp_(ema_f, [t.detach() for t in live_f], 1.0 - d)
        for e, m in other:
            e.copy_(m)
        return d

    def after_optimizer_step(self, state: TrainState) -> None:
        if state.model is not self.model:
            self.model, self._pairs = state.model, None
        self.update()

    def _sync_side_state(self) -> None:
        """Share the live model's frozen codes (FreezeHook) with the copy; never carry trackers."""
        if self.model is None or self.ema is None:
            return
        ema_layers = dict(quant_layers(self.ema))
        for name, layer in quant_layers(self.model):
            if name in ema_layers:
                ema_layers[name].weight_quant.frozen = layer.weight_quant.frozen
                ema_layers[name].weight_quant.tracker = None

    def eval_model(self) -> nn.Module | None:
        if self.ema is None:
            return None
        self._sync_side_state()
        self.ema.eval()
        return self.ema

    def ema_state(self) -> dict:
        """State dict of the EMA copy (same keys as the training model's)."""
        if self.ema is None:
            raise RuntimeError("EMAHook: no EMA copy yet (on_train_start was not called)")
        return self.ema.state_dict()

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Make `model` the EMA model (weights, biases, steps, quantizer extra state), in place."""
        model.load_state_dict(self.ema_state())

    def epoch_metrics(self, state: TrainState) -> dict:
        return {"ema/decay": self.decay_at(self.updates), "ema/updates": float(self.updates)}

    def state_dict(self) -> dict:
        if self.ema is None:
            return {}
        return {"ema": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if self.ema is None:  # resumed before on_train_start: apply once the copy exists
            self._pending = state
            return
        self.ema.load_state_dict(state["ema"])
        self.updates = int(state["updates"])


# ---------------------------------------------------------------------------------------------- QC
class ChannelAffine(nn.Module):
    """γ⊙h + β per output channel (dim 1 of a conv output, the last dim of a linear output)."""

    def __init__(self, channels: int, channel_dim: int = 1, device=None, dtype=None):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, device=device, dtype=dtype))
        self.beta = nn.Parameter(torch.zeros(channels, device=device, dtype=dtype))
        self.channel_dim = channel_dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dim = self.channel_dim % h.dim()
        shape = [1] * h.dim()
        shape[dim] = -1
        return h * self.gamma.view(shape) + self.beta.view(shape)

    def extra_repr(self) -> str:
        return f"channels={self.gamma.numel()}"


def _apply_qc(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    qc = getattr(module, "qc", None)
    return output if qc is None else qc(output)


def attach_qc(model: nn.Module, include_linear: bool = False) -> list[nn.Module]:
    """Give every quantized conv (and linear, if asked) an identity ChannelAffine `qc` applied to its
    output; idempotent. Returns the QC modules."""
    modules = []
    for _, layer in quant_layers(model):
        if isinstance(layer, QuantConv2d):
            channels, channel_dim = layer.out_channels, 1
        elif include_linear and isinstance(layer, QuantLinear):
            channels, channel_dim = layer.out_features, -1
        else:
            continue
        if getattr(layer, "qc", None) is None:
            layer.qc = ChannelAffine(channels, channel_dim, device=layer.weight.device, dtype=layer.weight.dtype)
            layer.register_forward_hook(_apply_qc)
        modules.append(layer.qc)
    return modules


def has_qc(state_dict: dict) -> bool:
    """Whether a model state dict holds QC parameters (then `attach_qc` before loading it)."""
    return any(k.endswith(".qc.gamma") for k in state_dict)


class QuantizationCorrectionStep:
    """Post step: train only the QC affines for `epochs` passes over the calibration batches."""
    name = "qc"

    def __init__(self, epochs: float = 1, lr: float = 1e-3, include_linear: bool = False):
        if epochs <= 0:
            raise ValueError(f"QC epochs must be positive, got {epochs}")
        self.epochs, self.lr, self.include_linear = epochs, lr, include_linear

    def run(self, model: nn.Module, task) -> dict:
        qcs = attach_qc(model, self.include_linear)
        params = [p for m in qcs for p in m.parameters()]
        batches = task.calib_batches()
        if not isinstance(batches, (list, tuple)):
            batches = list(batches)
        if not batches:
            raise ValueError("QC: the task gave no calibration batches")
        n_iter = max(1, round(self.epochs * len(batches)))
        requires = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=self.lr)
        was_training = model.training
        model.train()
        first = last = None
        try:
            for it in range(n_iter):
                loss = task.loss(model, batches[it % len(batches)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if it == 0:
                    first = loss.detach()
                last = loss.detach()
        finally:
            for p, r in requires.items():  # includes the QC parameters (trainable)
                p.requires_grad_(r)
            model.train(was_training)
        metrics = task.evaluate(model)
        return {"qc/iterations": n_iter, "qc/layers": len(qcs), "qc/loss_first": float(first),
                "qc/loss_last": float(last), **{f"qc/{k}": v for k, v in metrics.items()}}


EMA = Part("ema", lambda m, bits, tau: EMAHook(decay=m.ema_decay, ramp=m.ema_ramp), ("ema_decay", "ema_ramp"))
QC = Part("qc", lambda m, bits, tau: QuantizationCorrectionStep(epochs=m.qc_epochs, lr=m.qc_lr), ("qc_lr", "qc_epochs"))
register_recipe(Recipe("redyolo", hooks=(EMA,), post=(QC,), description="RedYolo: EMA of weights and steps, then QC"))
