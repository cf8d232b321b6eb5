"""Recipes by name: quantizer settings + training hooks + post-training steps (DESIGN.md "recipe"), registered
in qat/recipe_registry.py; this module registers the paper's own and imports every method file, so
`get_recipe` (timm's `create`) finds them all.

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

from dataclasses import dataclass, field

from . import freeze
from .afw import AFW
from .baselines import damp, lr_matched, redyolo, step_only  # noqa: F401  (they register their recipes)
from .baselines.adaround import ADAROUND
from .ead import EAD
from .hooks import TrainingHook
from .prepare.pipeline import SCALEGRAD_LAYERS
from .recipe_registry import RECIPES, Recipe, register_recipe

register_recipe(Recipe("lsq", description="LSQ, per-tensor (Esser et al. 2020)"))
register_recipe(Recipe("perchannel", per_channel=True, description="LSQ with per-output-channel weight steps"))
register_recipe(Recipe("scalegrad", pulse_smooth=True, distance_aware=True,
                       description="ScaleGrad: PulseSmooth step gradient + exp(-kΔ) weight gradient"))
register_recipe(Recipe("pulsesmooth", pulse_smooth=True, description="ScaleGrad's PulseSmooth step gradient alone"))
register_recipe(Recipe("distance", distance_aware=True, description="ScaleGrad's distance-aware weight gradient alone"))
register_recipe(Recipe("scalegrad+ead", pulse_smooth=True, distance_aware=True, hooks=(EAD,),
                       branch_from=("scalegrad", "tau"), description="ScaleGrad, then EAD for t > τ"))
register_recipe(Recipe("scalegrad+ead+afw", pulse_smooth=True, distance_aware=True,
                       hooks=(EAD, freeze.FREEZE_AFTER_TAU), post=(AFW,), branch_from=("scalegrad", "tau"),
                       description="Ours: ScaleGrad, EAD with oscillating weights frozen for t > τ, then AFW"),
                aliases=("ours",))
register_recipe(Recipe("scalegrad+ead+adaround", pulse_smooth=True, distance_aware=True, post=(ADAROUND,),
                       branch_from=("scalegrad+ead", "end"),
                       description="ScaleGrad+EAD, then AdaRound instead of AFW (Table V)"))


def canonical_recipe(name: str) -> str:
    """The registered name of a recipe given by an alias ("ours" → "scalegrad+ead+afw"), so a run's directory,
    its reuse and the tables see one name; any other name unchanged."""
    return RECIPES[name].name if name in RECIPES else name


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


@dataclass
class MethodConfig:
    """Hyper-parameters of the methods (SPEC defaults); every field is a command-line flag."""
    pulse_delta: float = 0.1
    dist_k: float = 1.0
    # where ScaleGrad's gradients act: the "low-bit" layers only (the default: not the 8-bit first / last; chosen on
    # calibration data, DEVIATIONS 2a) or "all" quantized layers (SPEC §2)
    scalegrad_layers: str = SCALEGRAD_LAYERS[0]
    ead_k: float = 1.0
    ead_alpha_max: float = 0.99
    ead_mu_init: float = 0.1
    osc_momentum: float = 0.001
    afw_gamma: float = 1.1
    afw_lambda: float = 0.1
    afw_lr: float = 1e-3
    afw_epochs: float | None = None        # None = the preset's budget (paper: 10)
    afw_loss: str = "mean"                 # task loss against λ: batch "mean" (as the paper) or "sum" (qat/afw.py)
    afw_theta_init: str = "residual"       # θ from the latent weight's "residual" or from 0 (qat/afw.py; DEVIATIONS 7c)
    afw_reg: str = "mean"                  # λ·mean R(g) ("mean", λ per weight; DEVIATIONS 7c) or λ·Σ R(g) ("sum")
    damp_weight: float = 0.1
    ema_decay: float = 0.9999
    ema_ramp: float = 2000
    qc_lr: float = 1e-3
    qc_epochs: float | None = None         # None = the preset's (paper: 1)
    adaround_iterations: int | None = None # None = the preset's (paper: 10000, AIMET)
    step_only_epochs: float | None = None  # None = the preset's
    extra: dict = field(default_factory=dict)


def method_keys(recipe: Recipe) -> set[str]:
    """The MethodConfig fields a run of `recipe` depends on: its parts', its gradient mode's, its parent's (a
    branch trains on from the parent's checkpoint), the oscillation tracker's momentum (every QAT run) and `extra`."""
    keys = {"osc_momentum", "extra"} | ({"pulse_delta"} if recipe.pulse_smooth else set()) \
        | ({"dist_k"} if recipe.distance_aware else set()) \
        | ({"scalegrad_layers"} if recipe.pulse_smooth or recipe.distance_aware else set())
    for part in (*recipe.hooks, *recipe.post):
        keys.update(part.keys)
    if recipe.branch_from is not None:
        keys |= method_keys(get_recipe(recipe.branch_from[0]))
    return keys


def make_hooks(recipe: Recipe, bits: int, tau: int, cfg: MethodConfig) -> list[TrainingHook]:
    """Training hooks of `recipe`: oscillation tracking (every QAT run), then its own; τ is the iteration
    where the EAD phase starts."""
    return [freeze.OscillationTrackingHook(cfg.osc_momentum)] + [part.make(cfg, bits, tau) for part in recipe.hooks]


def make_post_steps(recipe: Recipe, cfg: MethodConfig) -> list:
    """Post-training steps of `recipe`, in order (their budgets set: qat/run/lifecycle.py post_step_methods)."""
    return [part.make(cfg, None, None) for part in recipe.post]
