"""AFW's open readings (SPEC §6) on one trained `ours` classifier run, measured on the CALIBRATION split.

SPEC §6 leaves open the task loss's scale against λ, θ's initialisation, the regulariser's reduction, the
optimiser's lr and the number of steps; `qat.afw.AFWStep` has each as an option. This study starts every
reading from the same trained model (the run's `trained.pt`: after ScaleGrad + EAD with freezing, before AFW),
runs AFW on the training data and measures top-1 on the calibration split (the held-out slice of the training
set), never on the test split, so a reading can be chosen here without looking at the test set. It also reports
whether AFW acted: offsets, codes changed, and its objective over the first and last tenth of the steps.

    python analysis/afw_sensitivity.py runs/proxy/table5/mobilenetv2/scalegrad+ead+afw/w3a3/s0 \
        --out docs/afw_sensitivity.md
"""
from __future__ import annotations

import argparse
import copy
import itertools
import sys
from pathlib import Path

from qat.afw import AFWStep, LOSS_REDUCTIONS, REG_REDUCTIONS, THETA_INITS
from qat.config import RunConfig
from qat.hooks import TrainState
from qat.recipes import get_recipe, make_hooks
from qat.train import checkpoint as ckpt
from qat.train.classification import ClassificationTask, Trainer


class CalibrationSplitTrainer(Trainer):
    """The run's trainer with its evaluation on the calibration split instead of the test split."""

    def setup_data(self):
        train, calib, _test = super().setup_data()
        return train, calib, calib


def trained_model(run_dir: Path):
    """(trainer, model with its frozen codes) from a finished `ours` run's trained.pt."""
    state = ckpt.load(run_dir / "trained.pt")
    cfg = RunConfig.from_recorded(state["config"], wandb=False, resume=False)
    recipe = get_recipe(cfg.recipe)
    if "afw" not in [part.name for part in recipe.post]:
        raise SystemExit(f"error: {run_dir} is a {cfg.recipe} run; AFW runs after recipes with freezing: "
                         "scalegrad+ead+afw (ours)")
    trainer = CalibrationSplitTrainer(cfg)
    model, _ = trainer.quantized_model(init=False)
    model.load_state_dict(state["model"])
    hooks = make_hooks(recipe, cfg.bits, 0, cfg.methods)
    train_state = TrainState(model=model, iteration=state["iteration"])
    for h in hooks:
        h.on_train_start(train_state)
        if type(h).__name__ in state.get("hooks", {}):
            h.load_state_dict(state["hooks"][type(h).__name__])
    return trainer, model.to(trainer.device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a finished scalegrad+ead+afw classifier run")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2], help="AFW SGD learning rates to try")
    p.add_argument("--epochs", type=float, nargs="+", default=None,
                   help="AFW epochs to try (default: the run's preset value)")
    p.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    args = p.parse_args(argv)
    if not (args.run_dir / "trained.pt").is_file():
        print(f"error: {args.run_dir} has no trained.pt (not a finished QAT run directory)", file=sys.stderr)
        return 2
    trainer, model = trained_model(args.run_dir)
    task = ClassificationTask(trainer)
    task.log = lambda *a, **k: None  # the study logs to its table, not to the run
    before = trainer.evaluate(model)["top1"]
    epochs = args.epochs or [trainer.cfg.preset_value("afw_epochs")]
    m = trainer.cfg.methods
    lines = [f"AFW readings on {args.run_dir} (top-1 on the calibration split; before AFW: {before:.2f} %)", "",
             "| task loss | θ init | R | lr | epochs | offsets | codes changed | objective first → last | "
             "calib top-1 | Δ |", "|---|---|---|---|---|---|---|---|---|---|"]
    for loss, init, reg, lr, ep in itertools.product(LOSS_REDUCTIONS, THETA_INITS, REG_REDUCTIONS, args.lrs, epochs):
        trial = copy.deepcopy(model)
        step = AFWStep(ep, lr, gamma=m.afw_gamma, lam=m.afw_lambda, loss_reduction=loss, theta_init=init,
                       reg_reduction=reg)
        r = step.run(trial, task)
        top1 = r.get("afw/top1", r.get("afw/metric"))
        lines.append(f"| {loss} | {init} | {reg} | {lr:g} | {ep:g} | {r['afw/weights']} | {r['afw/changed_codes']} | "
                     f"{r.get('afw/objective_first', float('nan')):.4g} → {r.get('afw/objective_last', float('nan')):.4g} | "
                     f"{top1:.2f} | {top1 - before:+.2f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
