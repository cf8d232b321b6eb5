"""AFW's open readings (SPEC §6) on trained `ours` classifier runs (one per seed), measured on the CALIBRATION split.

SPEC §6 leaves open the task loss's scale against λ, θ's initialisation, the regulariser's reduction, the
optimiser's lr and the number of steps; `qat.afw.AFWStep` has each as an option. This study starts every
reading from the same trained model of each run (its `trained.pt`: after ScaleGrad + EAD with freezing, before
AFW), runs AFW on the training data and measures top-1 on the calibration split (the held-out slice of the
training set), never on the test split, so a reading is chosen here without looking at the test set. It reports
whether AFW acted (offsets, codes changed, its objective over the first and last tenth of the steps) and, over
the runs (seeds), each reading's calibration change against the model before AFW with a paired 95 % interval.

The choice, computed here: among the readings that change at least one code in every run (SPEC §6: AFW must
act), the one with the highest mean calibration change. Whether each reading lowered its objective is reported
beside it: on the same fixed batches before and after AFW (`afw/objective_before` / `_after`), or, for results
measured before AFWStep reported those, its mean over the first and the last tenth of the steps.

    python analysis/afw_sensitivity.py runs/proxy/table5/mobilenetv2/scalegrad+ead+afw/w3a3/s{0,1,2,3,4} \
        --readings mean/zero/sum/0.001 sum/zero/mean/0.01 mean/residual/mean/0.001 --out docs/afw_study.md

Each (run, reading) result is kept in `<out>.json` (or --cache) as it is measured, so a killed study resumes and
a study over more seeds measures only what is new.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from qat.afw import AFWStep, LOSS_REDUCTIONS, REG_REDUCTIONS, THETA_INITS
from qat.config import RunConfig
from qat.hooks import TrainState
from qat.recipes import get_recipe, make_hooks
from qat.train import checkpoint as ckpt
from qat.train.classification import ClassificationTask, Trainer
from tables.paired import paired_difference


@dataclass(frozen=True)
class Reading:
    """One way to read SPEC §6's open choices: task-loss reduction, θ init, R's reduction, SGD lr."""
    loss: str
    theta_init: str
    reg: str
    lr: float

    @classmethod
    def parse(cls, text: str) -> "Reading":
        """'loss/theta_init/reg/lr', e.g. 'sum/zero/mean/0.01'."""
        parts = text.split("/")
        if len(parts) != 4:
            raise ValueError(f"reading {text!r}: expected loss/theta_init/reg/lr, e.g. sum/zero/mean/0.01")
        loss, init, reg, lr = parts
        for value, allowed, what in ((loss, LOSS_REDUCTIONS, "loss"), (init, THETA_INITS, "theta_init"),
                                     (reg, REG_REDUCTIONS, "reg")):
            if value not in allowed:
                raise ValueError(f"reading {text!r}: {what} {value!r} is not one of {', '.join(allowed)}")
        try:
            lr_value = float(lr)
        except ValueError:
            raise ValueError(f"reading {text!r}: lr {lr!r} is not a number") from None
        return cls(loss, init, reg, lr_value)

    def key(self) -> str:
        return f"{self.loss}/{self.theta_init}/{self.reg}/{self.lr:g}"


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


def measure_run(run_dir: Path, readings: list[Reading], epochs: list[float] | None, cache: dict, save) -> None:
    """Every (reading, epochs) on `run_dir`'s trained model that `cache` lacks, into `cache[run_dir]`."""
    done = cache.setdefault(str(run_dir), {})
    trainer = model = task = None
    for reading in readings:
        for ep in epochs or [None]:
            key = f"{reading.key()}@{ep}"
            if key in done:
                continue
            if model is None:
                trainer, model = trained_model(run_dir)
                task = ClassificationTask(trainer)
                task.log = lambda *a, **k: None  # the study logs to its table, not to the run
                done.setdefault("before", trainer.evaluate(model)["top1"])
            m = trainer.cfg.methods
            n_epochs = ep if ep is not None else trainer.cfg.preset_value("afw_epochs")
            step = AFWStep(n_epochs, reading.lr, gamma=m.afw_gamma, lam=m.afw_lambda, loss_reduction=reading.loss,
                           theta_init=reading.theta_init, reg_reduction=reading.reg)
            r = step.run(copy.deepcopy(model), task)
            row = done[key] = {
                "epochs": n_epochs, "offsets": r["afw/weights"], "changed": r["afw/changed_codes"],
                "objective_first": r.get("afw/objective_first"), "objective_last": r.get("afw/objective_last"),
                "objective_before": r.get("afw/objective_before"), "objective_after": r.get("afw/objective_after"),
                "top1": r.get("afw/top1", r.get("afw/metric"))}
            save()
            print(f"{run_dir} {reading.key()} epochs {n_epochs:g}: {row['changed']} codes, calib "
                  f"{row['top1']:.2f} ({row['top1'] - done['before']:+.2f})", flush=True)


def objective_change(row: dict) -> tuple[float, float]:
    """(start, end) of the objective: on fixed batches before / after AFW where measured, else the means of the
    first and last tenth of its steps."""
    if row.get("objective_before") is not None:
        return row["objective_before"], row["objective_after"]
    return row["objective_first"], row["objective_last"]


def choose(summary: list[dict]) -> dict | None:
    """The reading AFW is run with: acted (changed codes) in every run, then the highest mean calibration change."""
    acting = [s for s in summary if s["acted_all"]]
    return max(acting, key=lambda s: s["diff"].mean) if acting else None


def report(run_dirs: list[Path], readings: list[Reading], epochs: list[float] | None, cache: dict) -> str:
    lines = ["Top-1 on each run's calibration split; Δ = after AFW − before AFW (the trained model with its frozen "
             "codes).", "", "Per run:", "",
             "| run | reading (loss/θ init/R/lr) | epochs | offsets | codes changed | objective start → end | "
             "calib top-1 | Δ |", "|---|---|---|---|---|---|---|---|"]
    summary = []
    for reading, ep in itertools.product(readings, epochs or [None]):
        key = f"{reading.key()}@{ep}"
        before, after, changed, lowered = {}, {}, [], 0
        for seed, run_dir in enumerate(run_dirs):
            done = cache.get(str(run_dir), {})
            if key not in done:
                continue
            row = done[key]
            before[seed], after[seed] = done["before"], row["top1"]
            changed.append(row["changed"])
            start, end = objective_change(row)
            lowered += int(end < start)
            lines.append(f"| {run_dir} | {reading.key()} | {row['epochs']:g} | {row['offsets']} | {row['changed']} | "
                         f"{start:.4g} → {end:.4g} | {row['top1']:.2f} | "
                         f"{row['top1'] - done['before']:+.2f} |")
        if changed:
            summary.append(dict(reading=reading.key(), epochs=ep, n=len(changed), changed=changed, lowered=lowered,
                                acted_all=min(changed) > 0, diff=paired_difference(before, after)))
    lines += ["", "Over the runs (paired by run; 95 % interval of the mean Δ):", "",
              "| reading (loss/θ init/R/lr) | epochs | runs | codes changed (min–max) | objective lowered | "
              "calib Δ [95 % CI] | verdict |", "|---|---|---|---|---|---|---|"]
    for s in summary:
        ep = "preset" if s["epochs"] is None else f"{s['epochs']:g}"
        lines.append(f"| {s['reading']} | {ep} | {s['n']} | {min(s['changed'])}–{max(s['changed'])} | "
                     f"{s['lowered']}/{s['n']} | {s['diff'].describe()} | {s['diff'].verdict()} |")
    chosen = choose(summary)
    verdict = (f"**{chosen['reading']}** ({chosen['diff'].describe()}, {chosen['diff'].verdict()} against no AFW)"
               if chosen else "none: no reading acted in every run")
    lines += ["", f"Choice (readings that changed codes in every run, then the highest mean calibration Δ): {verdict}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", type=Path, nargs="+", help="finished scalegrad+ead+afw classifier runs (one per seed)")
    p.add_argument("--readings", nargs="+", default=None,
                   help="readings loss/theta_init/reg/lr to try (default: every combination with --lrs)")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2], help="AFW SGD learning rates to try")
    p.add_argument("--epochs", type=float, nargs="+", default=None,
                   help="AFW epochs to try (default: the run's preset value)")
    p.add_argument("--out", type=Path, default=None, help="also write the report (Markdown) here")
    p.add_argument("--cache", type=Path, default=None, help="measured results (default: <out>.json when --out)")
    args = p.parse_args(argv)
    try:
        readings = [Reading.parse(r) for r in args.readings] if args.readings else [
            Reading(*c) for c in itertools.product(LOSS_REDUCTIONS, THETA_INITS, REG_REDUCTIONS, args.lrs)]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for run_dir in args.run_dirs:
        if not (run_dir / "trained.pt").is_file():
            print(f"error: {run_dir} has no trained.pt (not a finished QAT run directory)", file=sys.stderr)
            return 2
    cache_path = args.cache or (args.out.with_suffix(".json") if args.out else None)
    cache = json.loads(cache_path.read_text()) if cache_path and cache_path.is_file() else {}

    def save():
        if cache_path:
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            tmp.replace(cache_path)

    for run_dir in args.run_dirs:
        measure_run(run_dir, readings, args.epochs, cache, save)
    text = report(args.run_dirs, readings, args.epochs, cache)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
