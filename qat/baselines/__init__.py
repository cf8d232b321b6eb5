"""Baselines of the paper's comparisons (SPEC §7) and Table I's step-only phase.

    damp.DampeningHook              oscillation dampening (Nagel et al. 2022), a training hook
    redyolo.EMAHook                 RedYolo's EMA of weights and step sizes, a training hook
    redyolo.QuantizationCorrectionStep   RedYolo's QC, a post-training step
    adaround.AdaRoundStep           AdaRound (Nagel et al. 2020, AIMET defaults), a post-training step
    step_only.StepOnlyStep          Table I "Freeze weight": latent weights frozen, only steps trained
    lr_matched.WeightGradScaleHook  the lr-matched LSQ control of ScaleGrad's distance factor, a training hook

Freeze (Nagel et al. 2022 iterative freezing) lives in `qat.freeze` because AFW shares it. Each module defines
its recipe parts and registers its recipes (qat/recipe_registry.py); qat/recipes.py imports them all.
"""
