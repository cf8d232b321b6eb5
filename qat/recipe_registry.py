"""What a recipe is and where recipes are registered (timm's register / create shape).

A `Recipe` owns its quantizer settings (per-channel steps, ScaleGrad's gradient mode), its training hooks and
its post-training steps, each a `Part` that builds the hook or step and names the MethodConfig fields it reads.
A method's file defines its parts and registers its recipes with `register_recipe`; qat/recipes.py imports
every such file, so `qat.recipes.get_recipe(name)` (the create function) finds them all. Adding a method is
one file plus its line in qat/recipes.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Part:
    """A training hook or post step of a recipe: `make(methods, bits, tau)` builds it (τ: the iteration where
    the EAD phase starts); `keys`: the MethodConfig fields it reads (a run's training identity holds only
    those of its recipe, qat/run_reuse.py)."""
    name: str
    make: Callable[[Any, int, int], Any]
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    name: str
    per_channel: bool = False
    pulse_smooth: bool = False           # ScaleGrad's PulseSmooth step-size gradient (SPEC §2)
    distance_aware: bool = False         # ScaleGrad's exp(-kΔ) weight gradient (SPEC §2)
    hooks: tuple[Part, ...] = ()         # training hooks beyond oscillation tracking (every QAT run tracks)
    post: tuple[Part, ...] = ()          # post-training steps, in order
    # Prefix sharing: (recipe, "tau" | "end") — start from that recipe's checkpoint at τ / at the end.
    branch_from: tuple[str, str] | None = None
    description: str = ""

    def gradient_mode(self, methods) -> tuple[float | None, float | None]:
        """(pulse_delta, dist_k) for `qat.modules.set_gradient_mode`: None where the recipe leaves LSQ's."""
        return (methods.pulse_delta if self.pulse_smooth else None), (methods.dist_k if self.distance_aware else None)

    def quantizer(self, methods) -> dict:
        """The quantizer arguments of `qat.prepare.pipeline.quantize_prologue` under this recipe."""
        pulse_delta, dist_k = self.gradient_mode(methods)
        return {"per_channel": self.per_channel, "pulse_delta": pulse_delta, "dist_k": dist_k,
                "scalegrad_layers": methods.scalegrad_layers}

    def build_structure(self, model, bits: int, example, prologue, methods, **layers) -> None:
        """The quantized module tree without calibration (a checkpoint brings every value), in the recipe's
        gradient mode (also when the run branched from a parent of another recipe)."""
        from .modules import set_gradient_mode
        from .prepare.pipeline import build_structure, scalegrad_max_bits
        build_structure(model, bits, example, prologue, per_channel=self.per_channel, **layers)
        set_gradient_mode(model, *self.gradient_mode(methods), scalegrad_max_bits(methods.scalegrad_layers, bits))


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe, aliases: tuple[str, ...] = ()) -> Recipe:
    for name in (recipe.name, *aliases):
        if name in RECIPES:
            raise ValueError(f"recipe {name!r} is registered twice")
        RECIPES[name] = recipe
    return recipe
