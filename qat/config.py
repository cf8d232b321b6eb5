"""Presets (smoke / proxy / proxy-long / proxy-gpu / paper) and the resolved configuration of one run.

A preset changes only budgets and data; every preset runs the same code (DESIGN.md).
QAT keeps the paper's phase proportions: 80% ScaleGrad (τ), 20% EAD, then AFW ≈ 10% of the QAT epochs.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import ClassVar
from pathlib import Path

from .recipes import MethodConfig

REPO = Path(__file__).resolve().parent.parent

PRESETS: dict[str, dict] = {
    # Seconds on a CPU: proves every path runs (tests, CI).
    "smoke": dict(val_every_epoch=True, dataset="fashion-mnist", model_size="proxy", batch_size=32, train_subset=256, test_subset=256,
                  fp_epochs=2, fp_train_subset=2048, fp_lr=0.05, qat_epochs=5, qat_lr=0.01, calib_batches=2, afw_epochs=0.5,
                  qc_epochs=0.5, adaround_iterations=20, step_only_epochs=0.5, lr_step_fraction=0.5, bias_correction_batches=4),
    # Fashion-MNIST sized so that one seed of a table fits in about 30 minutes of a 2-core CPU (the main job):
    # FP models trained once (cached, 2 epochs of 25.6k images), QAT 130 iterations (5 epochs of 3 328 images),
    # bias correction on 2 batches of 128, accuracy on 5 000 test images.
    "proxy": dict(val_every_epoch=False, dataset="fashion-mnist", model_size="proxy", batch_size=128, train_subset=3328, test_subset=5000,
                  fp_epochs=2, fp_train_subset=25600, fp_lr=0.05, qat_epochs=5, qat_lr=0.01, calib_batches=16,
                  afw_epochs=0.5, qc_epochs=1, adaround_iterations=100, step_only_epochs=1, lr_step_fraction=0.4,
                  bias_correction_batches=2),
    # The budgets of the first committed results (tables/results/proxy-long/): 2.6× the QAT iterations, the
    # full test set; hours per table on a 2-core CPU.
    "proxy-long": dict(val_every_epoch=False, dataset="fashion-mnist", model_size="proxy", batch_size=128, train_subset=10000, test_subset=None,
                  fp_epochs=4, fp_train_subset=None, fp_lr=0.05, qat_epochs=5, qat_lr=0.01, calib_batches=32,
                  afw_epochs=0.5, qc_epochs=1, adaround_iterations=300, step_only_epochs=1, lr_step_fraction=0.4,
                  bias_correction_batches=4),
    # Same as proxy with the bigger budgets one GPU affords.
    "proxy-gpu": dict(val_every_epoch=True, dataset="fashion-mnist", model_size="proxy", batch_size=128, train_subset=None, test_subset=None,
                      fp_epochs=20, fp_train_subset=None, fp_lr=0.05, qat_epochs=20, qat_lr=0.01, calib_batches=32,
                      afw_epochs=2, qc_epochs=1, adaround_iterations=2000, step_only_epochs=2, lr_step_fraction=0.4,
                      bias_correction_batches=4),
    # The paper (§V): ImageNet, SGD lr 1e-3, momentum 0.9, wd 1e-5, batch 128, StepLR,
    # 80 epochs ScaleGrad + 20 EAD + 10 AFW; FP weights from a local checkpoint.
    "paper": dict(val_every_epoch=True, dataset="imagenet", model_size="paper", batch_size=128, train_subset=None, test_subset=None,
                  fp_epochs=None, fp_lr=None, qat_epochs=100, qat_lr=1e-3, calib_batches=32, afw_epochs=10,
                  qc_epochs=1, adaround_iterations=10000, step_only_epochs=1, lr_step_fraction=0.4,
                  bias_correction_batches=4),
}

# A QAT learning rate of its own for a model that does not train at its preset's (tables/results/README.md,
# DEVIATIONS 24): BN-folded MobileNetV1 (no residuals) diverges at qat_lr 1e-2 even at W8A8 and ends at chance
# with 1e-3; with 1e-4 it keeps most of its calibrated accuracy. Not a preset key (that would change every
# run's recorded preset values, so no earlier run would match for reuse): RunConfig records it as the run's `lr`.
MODEL_QAT_LR: dict[tuple[str, str], float] = {(preset, "mobilenetv1"): 1e-4
                                              for preset in ("proxy", "proxy-long", "proxy-gpu")}


class PresetRun:
    """What every run configuration (RunConfig, DetectionConfig) derives from its model, recipe, bits, seed,
    preset, table and out fields and its class's `presets`; `task` picks the glue that trains it
    (qat/run/lifecycle.py `run`)."""

    presets: ClassVar[dict[str, dict]]
    task: ClassVar[str]

    def preset_value(self, key):
        return self.presets[self.preset][key]

    @property
    def is_fp(self) -> bool:
        return self.recipe == "fp"

    @property
    def run_name(self) -> str:
        return run_name(self.table, self.model, self.recipe, self.bits, self.seed)

    @property
    def run_dir(self) -> Path:
        """runs/{preset}/{run name}: presets never share a run directory."""
        return Path(self.out) if self.out else runs_root() / self.preset / self.run_name

    @property
    def training_lr(self) -> float:
        """--lr where given (0 included), else the preset's FP or QAT lr."""
        return self.lr if self.lr is not None else self.preset_value("fp_lr" if self.is_fp else "qat_lr")


@dataclass
class RunConfig(PresetRun):
    model: str = "mobilenetv2"
    recipe: str = "lsq"                  # or "fp" for FP pretraining
    bits: int = 4
    seed: int = 0
    preset: str = "proxy"
    table: str = "adhoc"                 # W&B group / run-directory prefix
    data: str | None = None              # ImageNet root (paper preset) or Fashion-MNIST directory
    calib_split: str = "train"           # "train" = held-out slice of the training set; "val" = the paper's
    fp_checkpoint: str | None = None     # paper preset: local FP weights; proxy: cached under checkpoints/fp
    out: str | None = None               # run directory; default runs/{table}/{model}/{recipe}/w{b}a{b}/s{seed}
    resume: bool = False
    device: str = "auto"
    wandb: bool = True
    quantize_first_last: bool = False
    first_last_bits: int = 8
    cle: bool = True
    cle_relu6: str = "clip"              # CLE: a chain's ReLU6 becomes a per-channel clip (exact) or "relu" (DFQ)
    bias_correction: bool = True
    epochs: int | None = None            # overrides the preset's QAT (or FP) epochs
    lr: float | None = None              # overrides the preset's lr (QAT default: MODEL_QAT_LR, else qat_lr)
    batch_size: int | None = None
    train_subset: int | None = None
    weight_decay: float = 1e-5
    momentum: float = 0.9
    ead_fraction: float = 0.2            # EAD phase = last 20% of QAT epochs (paper 20 of 100)
    max_iterations: int | None = None    # stop after this many optimizer steps (tests, paper smoke)
    deterministic: bool = False          # bitwise-reproducible resume on CPU (disables oneDNN kernels)
    workers: int = 8                     # data-loader processes (paper preset)
    log_every: int = 20
    fig1_iterations: int = 200           # log Fig. 1 traces over the last N iterations
    methods: MethodConfig = field(default_factory=MethodConfig)
    presets: ClassVar[dict[str, dict]] = PRESETS  # a task with other budgets (torch detectors) brings its own
    task: ClassVar[str] = "classification"

    def __post_init__(self):
        if self.lr is None and not self.is_fp:
            self.lr = MODEL_QAT_LR.get((self.preset, self.model))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["preset_values"] = dict(self.presets[self.preset])
        return d

    @classmethod
    def from_recorded(cls, recorded: dict, **overrides) -> "RunConfig":
        """`to_dict`'s inverse (a run's config.json or a checkpoint's 'config'), with `overrides` applied; a
        TypeError names a key this code does not know (a run of other code)."""
        fields = {k: v for k, v in recorded.items() if k not in ("preset_values", "git_commit")}
        return cls(**{**fields, "methods": MethodConfig(**fields.get("methods", {})), **overrides})


def run_name(table: str, model: str, recipe: str, bits: int, seed: int) -> str:
    """`{table}/{model}/{recipe}/w{b}a{b}/s{seed}` (DESIGN.md); FP runs have no bit-width level."""
    if recipe == "fp":
        return f"{table}/{model}/fp/s{seed}"
    return f"{table}/{model}/{recipe}/w{bits}a{bits}/s{seed}"


def runs_root() -> Path:
    return Path(os.environ.get("QAT_RUNS", REPO / "runs"))


FP_TABLE = "fp"  # the run directory group of FP pretraining runs: runs/<preset>/fp/<model>/fp/s0


def fp_run_dir(preset: str, model: str) -> Path:
    """Where the FP run of a proxy model lives (the launcher and every QAT run train it there, seed 0)."""
    return runs_root() / preset / run_name(FP_TABLE, model, "fp", 0, 0)


def fp_cache_path(model: str, preset: str) -> Path:
    """Cached FP checkpoint of a proxy model, shared by every QAT run of that model and preset size."""
    return Path(os.environ.get("QAT_CHECKPOINTS", REPO / "checkpoints")) / "fp" / f"{model}-{preset}.pt"


def detector_fp_cache(model: str, preset: str, data_digest: str) -> Path:
    """Cached FP detector (torch detectors and Ultralytics), keyed by its data's digest: a regenerated data set
    never meets a stale FP model."""
    return fp_cache_path(f"{model}-det", f"{preset}-{data_digest}")


def path_digest(path: str | Path) -> str:
    """The data digest of user-given detection data (a data yaml or a COCO root): its resolved path's."""
    return hashlib.sha256(Path(path).resolve().as_posix().encode()).hexdigest()[:8]


# The preset values an FP model's training depends on (classification, Ultralytics and torch detector presets).
FP_BUDGET_KEYS = ("dataset", "fmnist_det", "model_size", "imgsz", "batch", "batch_size", "fp_epochs", "fp_lr",
                  "fp_train_subset", "fp_warmup_epochs")


def check_fp_budgets(path: Path, trained_with: dict | None, preset: str, now: dict) -> None:
    """A cached FP model is named by model and preset, not by the preset's budgets: refuse one trained with
    other FP budgets than the preset sets now (an edited preset would reuse it silently). Checkpoints that
    record no preset values (written before they were recorded) pass."""
    changed = [k for k in FP_BUDGET_KEYS if k in (trained_with or {}) and k in now and trained_with[k] != now[k]]
    if changed:
        was = ", ".join(f"{k}={trained_with[k]!r}" for k in changed)
        new = ", ".join(f"{k}={now[k]!r}" for k in changed)
        raise ValueError(f"the cached FP model {path} was trained with {was}, but the {preset} preset now sets {new}: "
                         f"delete it and its FP run (runs/{preset}/{FP_TABLE}/<model>) to train it again")
