"""A finished classifier run's final model, rebuilt from its run directory as a resume would rebuild it.

The structure comes from the run's recorded configuration (`config.json`): the FP architecture, the prologue's
structural changes (BN folding, CLE's ReLU6 swap) and the quantized layers, with no data-dependent
initialisation; `final.pt` then loads the weights. Frozen codes are not part of a model's state dict: for a
recipe that freezes and has no post step, they are read from `trained.pt`'s FreezeHook state (the post steps
that follow freezing, AFW and AdaRound, write the codes into the latent weights themselves).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import RunConfig
from ..freeze import FrozenCodes
from ..modules import quant_layers
from ..prepare.pipeline import build_structure
from ..recipes import get_recipe
from ..run_dir import CONFIG_NAME
from ..train import checkpoint as ckpt


class ExportError(ValueError):
    """A run or model that cannot be exported; the message is the CLI's `error:` line."""


@dataclass
class LoadedRun:
    cfg: RunConfig
    trainer: object          # the run's Trainer (its test data and evaluation)
    model: nn.Module         # the final fake-quant model, eval mode, on the CPU
    result: dict             # the run's result.json


def run_config(recorded: dict) -> RunConfig:
    """RunConfig from a recorded config dict (config.json or a checkpoint's 'config')."""
    try:
        return RunConfig.from_recorded(recorded, wandb=False, resume=False, device="cpu")
    except TypeError as e:  # a key this code does not know: a run of other code
        raise ExportError(f"the recorded configuration does not fit this code's RunConfig: {e}") from None


def build_quantized_structure(cfg: RunConfig):
    """(trainer, quantized module tree) of a classifier run, without weights and without its FP cache."""
    from ..train.classification import Trainer
    trainer = Trainer(cfg)
    model = trainer.build_net()
    example = trainer.calib_inputs()[0]
    build_structure(model, cfg.bits, example, trainer.prologue_options(),
                    per_channel=get_recipe(cfg.recipe).per_channel, high_precision=trainer.high_precision_layers(model))
    return trainer, model


def load_run(run_dir: Path) -> LoadedRun:
    run_dir = Path(run_dir)
    for name in (CONFIG_NAME, "final.pt", "result.json"):
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir} has no {name}: not a finished run directory")
    recorded = json.loads((run_dir / CONFIG_NAME).read_text())
    if "bits" not in recorded or "recipe" not in recorded:
        raise ExportError(f"{run_dir / CONFIG_NAME} is not a classifier run's configuration (a detector run? "
                          f"see `python -m qat.export --help`)")
    if recorded["recipe"] == "fp":
        raise ExportError(f"{run_dir} is an FP run: only QAT runs have integer weights to export")
    cfg = run_config(recorded)
    trainer, model = build_quantized_structure(cfg)
    try:
        model.load_state_dict(ckpt.load(run_dir / "final.pt")["model"])
    except RuntimeError as e:
        raise ExportError(f"{run_dir / 'final.pt'} does not fit the recorded configuration: {str(e)[:300]}") from None
    attach_frozen_codes_from(model, run_dir / "trained.pt", cfg.recipe)
    return LoadedRun(cfg, trainer, model.eval(), json.loads((run_dir / "result.json").read_text()))


def attach_frozen_codes_from(model: nn.Module, trained: Path, recipe: str) -> None:
    """Give the layers their frozen codes from the trained checkpoint's FreezeHook state when the final model
    evaluated with them (see the module doc)."""
    if get_recipe(recipe).post or not trained.is_file():
        return
    frozen = ckpt.load(trained).get("hooks", {}).get("FreezeHook", {})
    layers = dict(quant_layers(model))
    for name, state in frozen.items():
        wq = layers[name].weight_quant
        wq.frozen = FrozenCodes(layers[name].weight.detach())
        wq.frozen.load_state_dict(state)


def effective_codes(layer: nn.Module) -> torch.Tensor:
    """The integer codes (as int64) the layer evaluates its weight with, frozen codes included."""
    if layer.weight_quant.afw is not None:
        raise ExportError("AFW offsets are still attached (an unfinished AFW step): finalize_afw first")
    return layer.weight_quant.effective_codes(layer.weight).to(torch.int64)
