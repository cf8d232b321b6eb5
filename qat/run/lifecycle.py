"""The rules of a run that every task shares, written once (classification, torch detectors, Ultralytics).

`qat.run.run(cfg)` trains any run by its model's task; a task's glue (qat/train/classification.py `Trainer`,
whose subclass qat/detection/torch_train.py trains SSD / YOLOX, and qat/detection/train.py for Ultralytics)
holds its loop and its Task adapter and takes from here (passing itself as `train`, for the parent or FP run
of the same model):
- `start_point`: where a run starts: fresh, resumed (`--resume`: from its `checkpoint.pt`, or from
  `trained.pt` when it was killed in the post steps) or branched from its recipe's parent (`Recipe.branch_from`)
  at τ (`checkpoint_tau.pt`) or at the end (`trained.pt`); the parent is checked, or trained first;
- `tau_epoch`: the epoch where the EAD phase starts;
- `fp_weights`: the FP model a QAT run quantizes: --fp-checkpoint, else the task's cached FP model, trained
  first by an FP run when missing, refused when its preset budgets changed; `keep_fp_cache`: the FP run that
  trains that cached model writes it there when it ends, and puts it back when met finished with it deleted;
- `training_hooks`: a QAT run's training hooks: the step-update bound where the preset or --step-update-bound sets
  one, its recipe's, the Fig. 1 traces;
- `post_step_methods`: post-step budgets left unset take the preset's; `prologue_options`: the prologue's.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..config import BUDGET_OVERRIDES, FP_TABLE, check_fp_budgets, writes_fp_cache
from ..prepare.pipeline import PrologueOptions
from ..hooks import TrainingHook
from ..logging.fig1_traces import Fig1TraceHook
from ..logging.run_reader import reused_source
from ..recipes import MethodConfig, get_recipe, make_hooks
from ..run_dir import check_parent

# A run directory's checkpoints (every task): the last epoch's (dropped when the run finishes), the one at τ
# (the branch point of EAD recipes), the trained model before the post steps, the final model.
CHECKPOINT, TAU_CHECKPOINT, TRAINED, FINAL = "checkpoint.pt", "checkpoint_tau.pt", "trained.pt", "final.pt"
POST_BUDGETS = ("afw_epochs", "qc_epochs", "adaround_iterations", "step_only_epochs")


class NonFiniteLoss(RuntimeError):
    """The training loss stopped being finite (every task's loop raises it; the CLI exits with status 1)."""


@dataclass(frozen=True)
class Start:
    """Where a run starts: "fresh", "resume" (its own checkpoint) or "branch" (its parent's, at τ or the end);
    `trained`: the checkpoint holds a trained model, so the run goes straight to its post steps."""
    kind: str = "fresh"
    path: Path | None = None
    trained: bool = False

    def describe(self, epoch: int | None = None) -> str:
        if self.kind == "resume":
            return "resumed" + (" after training" if self.trained else f" at epoch {epoch}" if epoch is not None else "")
        return f"branched from {self.path}" if self.kind == "branch" else "fresh"


def tau_epoch(epochs: int, ead_fraction: float) -> int:
    """τ in epochs: the ScaleGrad phase is the first (1 - ead_fraction) of the QAT epochs, rounded (paper: 80 of
    100), and ends before the last epoch when there is an EAD phase at all, so a short run (2 epochs: round(1.6)
    = 2) still has one EAD epoch."""
    tau = round((1 - ead_fraction) * epochs)
    return min(tau, epochs - 1) if epochs > 1 and ead_fraction > 0 else tau


def training_hooks(cfg, tau: int) -> list[TrainingHook]:
    """The training hooks of the QAT run `cfg` (τ in iterations). The step-update bound comes first: it bounds
    the optimizer's update only, not EAD's EMA of the step sizes or what any later hook writes."""
    from ..step_bound import StepUpdateBound
    bound = [StepUpdateBound(cfg.step_bound)] if cfg.step_bound else []
    return bound + make_hooks(get_recipe(cfg.recipe), cfg.bits, tau, cfg.methods) + [Fig1TraceHook(cfg.fig1_iterations)]


def start_point(cfg, train, barrier=lambda: None, announce=print) -> Start:
    """Where the QAT or FP run `cfg` starts (module docstring); a branch's parent is checked against what it
    would be trained with now, or trained first (`train(parent config)`). An unfinished run without --resume is
    refused."""
    run_dir = cfg.run_dir
    last, trained = run_dir / CHECKPOINT, run_dir / TRAINED
    if not cfg.resume and (last.is_file() or trained.is_file()):
        raise ValueError(f"{run_dir} holds a checkpoint of an unfinished run: pass --resume to continue it "
                         f"or delete the directory")
    if cfg.resume and trained.is_file():
        return Start("resume", trained, trained=True)
    if cfg.resume and last.is_file():
        return Start("resume", last)
    branch_from = None if cfg.is_fp else get_recipe(cfg.recipe).branch_from
    if branch_from is None:
        return Start()
    parent_recipe, point = branch_from
    parent = replace(cfg, recipe=parent_recipe, out=None, resume=True)
    if cfg.out:  # keep ad-hoc output trees self-contained
        parent = replace(parent, out=str(Path(cfg.out).parent / parent_recipe.replace("/", "_")))
    name = TAU_CHECKPOINT if point == "tau" else TRAINED
    # A parent cell the launcher reused holds a pointer to the identical run, which holds the checkpoint.
    parent_dir = parent.run_dir if (parent.run_dir / name).is_file() else reused_source(parent.run_dir) or parent.run_dir
    path = parent_dir / name
    if path.is_file():  # (a parent run trained here checks its directory itself)
        check_parent(parent_dir, parent.to_dict(), cfg.recipe, point)
    else:
        announce(f"[qat] {cfg.recipe} branches from {parent_recipe} at {point}: running it first")
        train(parent)
        barrier()
    if not path.is_file():
        raise FileNotFoundError(f"parent run {parent.run_dir} left no {path.name}")
    return Start("branch", path, trained=point == "end")


def fp_config(cfg):
    """The FP run that trains the cached FP model of a QAT run: same model, preset and data, the preset's FP
    budgets, seed 0, in the FP table (`writes_fp_cache`)."""
    return replace(cfg, recipe="fp", out=None, resume=True, seed=0, table=FP_TABLE, **dict.fromkeys(BUDGET_OVERRIDES))


def fp_weights(cfg, cache: Path, recorded_budgets, train, barrier=lambda: None, announce=print) -> Path:
    """The FP checkpoint a QAT run quantizes: --fp-checkpoint, else `cache`, trained first by `train(fp_config(cfg))`
    when missing (presets without FP budgets need --fp-checkpoint). A cached model trained with other FP
    budgets than the preset sets now is refused; `recorded_budgets(path)`: the preset values stored with it."""
    path = Path(cfg.fp_checkpoint) if cfg.fp_checkpoint else Path(cache)
    if not path.is_file() and not cfg.fp_checkpoint:
        if cfg.preset_value("fp_epochs") is None:
            raise FileNotFoundError(f"FP checkpoint not found: {path} (the {cfg.preset} preset needs "
                                    f"--fp-checkpoint with the model's trained FP weights)")
        announce(f"[qat] no cached FP model at {path}: training it first")
        train(fp_config(cfg))
        barrier()
    if not path.is_file():
        raise FileNotFoundError(f"FP checkpoint not found: {path}")
    if not cfg.fp_checkpoint:
        check_fp_budgets(path, recorded_budgets(path), cfg.preset, cfg.presets[cfg.preset])
    return path


def keep_fp_cache(cfg, cache_path, write, finished_earlier: bool = False) -> None:
    """The FP run that trains its preset's cached FP model (`writes_fp_cache`) writes it there when it ends; met
    `finished_earlier` with the cache deleted since, it puts it back (any other run: nothing). `cache_path()`: where
    the task caches it (called for that run only); `write(path)`: the task's copy of the run's own final model."""
    if not writes_fp_cache(cfg):
        return
    cache = Path(cache_path())
    if finished_earlier and cache.is_file():
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    write(cache)


def prologue_options(cfg) -> PrologueOptions:
    """The quantization prologue's options of a run (qat/prepare/pipeline.py), every task's."""
    return PrologueOptions(cle=cfg.cle, cle_relu6=cfg.cle_relu6, bias_correction=cfg.bias_correction,
                           quantize_first_last=cfg.quantize_first_last, first_last_bits=cfg.first_last_bits,
                           calib_batches=cfg.preset_value("calib_batches"),
                           bias_correction_batches=cfg.preset_value("bias_correction_batches"))


def open_run_logger(cfg, run_dir: Path, *, task: str, metric: str, optimizer, epochs: int, iterations: int,
                    batch_size: int, methods: MethodConfig | None = None, options: dict | None = None,
                    resume_id: str | None = None):
    """The run's W&B logger: every task logs the same config keys (qat/logging/schema.py) and tags."""
    from ..logging.run_logger import RunLogger
    from ..logging.schema import run_config
    config = run_config(table=cfg.table, model=cfg.model, recipe=cfg.recipe, bits=cfg.bits, seed=cfg.seed,
                        preset=cfg.preset, task=task, metric=metric, optimizer=optimizer, epochs=epochs,
                        iterations=min(iterations, cfg.max_iterations or iterations), batch_size=batch_size,
                        methods=methods or cfg.methods, options=options or cfg.to_dict())
    tags = [cfg.model, cfg.recipe] + ([] if cfg.is_fp else [f"w{cfg.bits}a{cfg.bits}"]) + [cfg.preset]
    return RunLogger(run_dir, cfg.run_name, cfg.table, tags, config, resume_id=resume_id)


def step_size_metrics(model) -> dict:
    """Every quantized layer's weight (mean) and activation step size, logged each epoch."""
    from ..modules import quant_layers
    return {f"steps/{name}/{kind}": float(getattr(layer, f"{q}_quant").step.detach().mean())
            for name, layer in quant_layers(model) for kind, q in (("weight", "weight"), ("act", "input"))}


def post_step_methods(methods: MethodConfig, preset_value) -> MethodConfig:
    """The methods' settings with every post-step budget left unset (None) taken from the preset."""
    return replace(methods, **{k: preset_value(k) for k in POST_BUDGETS if getattr(methods, k) is None})
