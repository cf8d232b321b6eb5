"""Recipes by name: quantizer settings + training hooks + post-training steps (DESIGN.md "recipe").

Phases share prefixes so that runs branch from checkpoints instead of retraining:
  lsq                         LSQ for the whole QAT schedule
  scalegrad                   ScaleGrad for the whole schedule
  pulsesmooth, distance       ScaleGrad's two parts alone (PulseSmooth step gradient; exp(-kΔ) weight gradient)
  lsq-lr-matched              LSQ with weight gradients scaled by the distance factor's mean (the control that
                              tells a ScaleGrad effect from a learning-rate effect)
  scalegrad+ead               = scalegrad up to τ (branched from its τ checkpoint), then EAD
  scalegrad+ead+afw ("ours")  = scalegrad up to τ, then EAD with oscillating weights frozen, then AFW
  scalegrad+ead+adaround      = the trained scalegrad+ead model, then AdaRound (Table V)
Baselines (SPEC §7): perchannel, damp, freeze, redyolo; Table I: lsq-freeze-weights (= trained lsq,
then step sizes only).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from .hooks import TrainingHook


@dataclass(frozen=True)
class Recipe:
    name: str
    per_channel: bool = False
    pulse_smooth: bool = False           # ScaleGrad's PulseSmooth step-size gradient (SPEC §2)
    distance_aware: bool = False         # ScaleGrad's exp(-kΔ) weight gradient (SPEC §2)
    hooks: tuple[str, ...] = ()          # training hooks beyond oscillation tracking, see make_hooks
    post: tuple[str, ...] = ()           # post-training steps, see make_post_steps
    # Prefix sharing: (recipe, "tau" | "end") — start from that recipe's checkpoint at τ / at the end.
    branch_from: tuple[str, str] | None = None
    description: str = ""

    def gradient_mode(self, cfg: "MethodConfig") -> tuple[float | None, float | None]:
        """(pulse_delta, dist_k) for `qat.modules.set_gradient_mode`: None where the recipe leaves LSQ's."""
        return (cfg.pulse_delta if self.pulse_smooth else None), (cfg.dist_k if self.distance_aware else None)


RECIPES = {r.name: r for r in [
    Recipe("lsq", description="LSQ, per-tensor (Esser et al. 2020)"),
    Recipe("scalegrad", pulse_smooth=True, distance_aware=True,
           description="ScaleGrad: PulseSmooth step gradient + exp(-kΔ) weight gradient"),
    Recipe("scalegrad+ead", pulse_smooth=True, distance_aware=True, hooks=("ead",),
           branch_from=("scalegrad", "tau"),
           description="ScaleGrad, then EAD for t > τ"),
    Recipe("scalegrad+ead+afw", pulse_smooth=True, distance_aware=True, hooks=("ead", "freeze_after_tau"),
           post=("afw",),
           branch_from=("scalegrad", "tau"),
           description="Ours: ScaleGrad, EAD with oscillating weights frozen for t > τ, then AFW"),
    Recipe("scalegrad+ead+adaround", pulse_smooth=True, distance_aware=True, post=("adaround",),
           branch_from=("scalegrad+ead", "end"),
           description="ScaleGrad+EAD, then AdaRound instead of AFW (Table V)"),
    Recipe("pulsesmooth", pulse_smooth=True, description="ScaleGrad's PulseSmooth step gradient alone"),
    Recipe("distance", distance_aware=True, description="ScaleGrad's distance-aware weight gradient alone"),
    Recipe("lsq-lr-matched", hooks=("lr_matched",),
           description="LSQ with weight gradients × E[exp(-kΔ)] (ScaleGrad's mean weight-lr cut; control)"),
    Recipe("perchannel", per_channel=True, description="LSQ with per-output-channel weight steps"),
    Recipe("damp", hooks=("damp",), description="Oscillation dampening (Nagel et al. 2022)"),
    Recipe("freeze", hooks=("freeze",), description="Iterative weight freezing (Nagel et al. 2022)"),
    Recipe("redyolo", hooks=("ema",), post=("qc",), description="RedYolo: EMA of weights and steps, then QC"),
    Recipe("lsq-freeze-weights", post=("step_only",), branch_from=("lsq", "end"),
           description="Table I: trained LSQ, then all latent weights frozen and only step sizes trained"),
]}
RECIPES["ours"] = RECIPES["scalegrad+ead+afw"]


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


@dataclass
class MethodConfig:
    """Hyper-parameters of the methods (SPEC defaults); every field is a command-line flag."""
    pulse_delta: float = 0.1
    dist_k: float = 1.0
    ead_k: float = 1.0
    ead_alpha_max: float = 0.99
    ead_mu_init: float = 0.1
    osc_momentum: float = 0.001
    afw_gamma: float = 1.1
    afw_lambda: float = 0.1
    afw_lr: float = 1e-3
    afw_epochs: float | None = None        # None = the preset's budget (paper: 10)
    afw_loss: str = "mean"                 # task loss against λ: batch "mean" (face value) or "sum" (qat/afw.py)
    afw_theta_init: str = "zero"           # θ from 0 or from the latent weight's "residual" (qat/afw.py)
    afw_reg: str = "sum"                   # λ·Σ R(g) ("sum") or λ·mean R(g) ("mean", λ per weight)
    damp_weight: float = 0.1
    ema_decay: float = 0.9999
    ema_ramp: float = 2000
    qc_lr: float = 1e-3
    qc_epochs: float | None = None         # None = the preset's (paper: 1)
    adaround_iterations: int | None = None # None = the preset's (paper: 10000, AIMET)
    step_only_epochs: float | None = None  # None = the preset's
    extra: dict = field(default_factory=dict)


# The MethodConfig fields each part of a recipe reads (make_hooks, make_post_steps, the quantizer's gradient
# mode): a run's training identity holds only its recipe's (qat/run_reuse.py), so EAD settings never tell two
# ScaleGrad runs apart and a branch's parent is compared on the settings the parent trained with.
HOOK_KEYS = {"ead": ("ead_k", "ead_alpha_max", "ead_mu_init"), "freeze": ("osc_momentum",),
             "freeze_after_tau": ("osc_momentum",), "damp": ("damp_weight",), "ema": ("ema_decay", "ema_ramp"),
             "lr_matched": ("dist_k",)}
POST_KEYS = {"afw": ("afw_gamma", "afw_lambda", "afw_lr", "afw_epochs", "afw_loss", "afw_theta_init", "afw_reg"),
             "adaround": ("adaround_iterations",),
             "qc": ("qc_lr", "qc_epochs"), "step_only": ("step_only_epochs",)}


def method_keys(recipe: Recipe) -> set[str]:
    """The MethodConfig fields a run of `recipe` depends on: its own, its parent's (a branch trains on from the
    parent's checkpoint), the oscillation tracker's momentum (every QAT run) and `extra`."""
    keys = {"osc_momentum", "extra"} | ({"pulse_delta"} if recipe.pulse_smooth else set()) \
        | ({"dist_k"} if recipe.distance_aware else set())
    for name in recipe.hooks:
        keys.update(HOOK_KEYS[name])
    for name in recipe.post:
        keys.update(POST_KEYS[name])
    if recipe.branch_from is not None:
        keys |= method_keys(get_recipe(recipe.branch_from[0]))
    return keys


def make_hooks(recipe: Recipe, bits: int, tau: int, cfg: MethodConfig) -> list[TrainingHook]:
    """Training hooks of `recipe`; τ is the iteration where the EAD phase starts."""
    from .ead import EADHook
    from .freeze import FreezeHook, OscillationTrackingHook

    hooks: list[TrainingHook] = [OscillationTrackingHook(cfg.osc_momentum)]
    for name in recipe.hooks:
        if name == "ead":
            hooks.append(EADHook(tau, cfg.ead_k, cfg.ead_alpha_max, cfg.ead_mu_init))
        elif name == "freeze":
            hooks.append(FreezeHook(bits, cfg.osc_momentum))
        elif name == "freeze_after_tau":
            hooks.append(FreezeHook(bits, cfg.osc_momentum, active_from=tau))
        elif name == "lr_matched":
            hooks.append(_load("qat.baselines.lr_matched", "WeightGradScaleHook")(
                _load("qat.baselines.lr_matched", "mean_distance_factor")(cfg.dist_k)))
        elif name == "damp":
            hooks.append(_load("qat.baselines.damp", "DampeningHook")(final_weight=cfg.damp_weight))
        elif name == "ema":
            hooks.append(_load("qat.baselines.redyolo", "EMAHook")(decay=cfg.ema_decay, ramp=cfg.ema_ramp))
        else:
            raise ValueError(f"recipe {recipe.name}: unknown hook {name!r}")
    return hooks


def make_post_steps(recipe: Recipe, cfg: MethodConfig) -> list:
    steps = []
    for name in recipe.post:
        if name == "afw":
            from .afw import AFWStep
            steps.append(AFWStep(cfg.afw_epochs, cfg.afw_lr, gamma=cfg.afw_gamma, lam=cfg.afw_lambda,
                                 loss_reduction=cfg.afw_loss, theta_init=cfg.afw_theta_init, reg_reduction=cfg.afw_reg))
        elif name == "adaround":
            steps.append(_load("qat.baselines.adaround", "AdaRoundStep")(iterations=cfg.adaround_iterations))
        elif name == "qc":
            steps.append(_load("qat.baselines.redyolo", "QuantizationCorrectionStep")(epochs=cfg.qc_epochs, lr=cfg.qc_lr))
        elif name == "step_only":
            steps.append(_load("qat.baselines.step_only", "StepOnlyStep")(epochs=cfg.step_only_epochs))
        else:
            raise ValueError(f"recipe {recipe.name}: unknown post step {name!r}")
    return steps


def _load(module: str, name: str):
    return getattr(importlib.import_module(module), name)
