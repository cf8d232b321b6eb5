"""The resolved configuration of one run of any task (`RunConfig`), run names and directories, the FP cache.

Budgets come from the presets of the run's task (qat/presets.py).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .presets import MODEL_QAT_LR, PRESETS
from .recipes import MethodConfig, canonical_recipe

REPO = Path(__file__).resolve().parent.parent

# Ultralytics detector name -> model yaml (scale letter picked from the file name).
ULTRALYTICS_DETECTORS = {"yolov8n": "yolov8n.yaml", "yolov8s": "yolov8s.yaml", "yolov8m": "yolov8m.yaml",
                         "yolov9t": "yolov9t.yaml", "yolov9s": "yolov9s.yaml"}
# Fields only some tasks read (the others refuse them instead of ignoring them).
TASK_FIELDS = {"imgsz": ("detection", "ultralytics"), "val_json": ("ultralytics",), "fraction": ("ultralytics",),
               "train_subset": ("classification", "detection")}


def task_of(model: str) -> str:
    """The task whose glue trains `model` (qat/run/lifecycle.py `run`) and whose presets it takes: an
    Ultralytics detector, SSD / YOLOX ("detection", through the classification loop) or a classifier."""
    from .detection.torch_detectors import TORCH_DETECTORS
    if model in ULTRALYTICS_DETECTORS:
        return "ultralytics"
    return "detection" if model in TORCH_DETECTORS else "classification"


@dataclass
class RunConfig:
    """The resolved configuration of one run of any task (its model's: `task`); budgets left unset take the
    preset's of that task (qat/presets.py)."""
    model: str = "mobilenetv2"
    recipe: str = "lsq"                  # or "fp" for FP pretraining
    bits: int = 4
    seed: int = 0
    preset: str = "proxy"
    table: str = "adhoc"                 # W&B group / run-directory prefix
    data: str | None = None              # ImageNet root / Fashion-MNIST directory; COCO root; Ultralytics data yaml
    val_json: str | None = None          # Ultralytics: COCO ground truth of the val split (default: the yaml's)
    calib_split: str = "train"           # "train" = held-out slice of the training set; "val" = the paper's
    fp_checkpoint: str | None = None     # paper preset: local FP weights; proxy: cached under checkpoints/fp
    out: str | None = None               # run directory; default runs/{table}/{model}/{recipe}/w{b}a{b}/s{seed}
    resume: bool = False
    device: str = "auto"                 # Ultralytics detectors also take its GPU ids ("0", "0,1")
    wandb: bool = True
    quantize_first_last: bool = False
    first_last_bits: int = 8
    cle: bool | None = None              # None: on for classifiers; off for detectors (SiLU is not ReLU-like)
    cle_relu6: str = "clip"              # CLE: a chain's ReLU6 becomes a per-channel clip (exact) or "relu" (DFQ)
    bias_correction: bool = True
    epochs: int | None = None            # overrides the preset's QAT (or FP) epochs
    lr: float | None = None              # overrides the preset's lr (QAT default: MODEL_QAT_LR, else qat_lr)
    batch_size: int | None = None
    train_subset: int | None = None      # classifiers, SSD / YOLOX: training images used
    imgsz: int | None = None             # detectors: square input size
    fraction: float | None = None        # Ultralytics: share of the training images used per QAT epoch
    step_update_bound: float | None = None  # overrides the preset's bound on a step size's update (0 = none)
    weight_decay: float = 1e-5
    momentum: float = 0.9
    ead_fraction: float = 0.2            # EAD phase = last 20% of QAT epochs (paper 20 of 100)
    max_iterations: int | None = None    # stop after this many optimizer steps (tests, paper smoke)
    deterministic: bool = False          # bitwise-reproducible resume on CPU (disables oneDNN kernels)
    workers: int | None = None           # data-loader processes; None: 8 for classifiers, 0 for detectors
    log_every: int = 20
    fig1_iterations: int = 200           # log Fig. 1 traces over the last N iterations
    methods: MethodConfig = field(default_factory=MethodConfig)

    def __post_init__(self):
        classifier = self.task == "classification"
        self.recipe = canonical_recipe(self.recipe)
        if self.cle is None:
            self.cle = classifier
        if self.workers is None:
            self.workers = 8 if classifier else 0
        if self.lr is None and not self.is_fp:
            self.lr = MODEL_QAT_LR.get((self.preset, self.model))

    @property
    def task(self) -> str:
        return task_of(self.model)

    @property
    def presets(self) -> dict[str, dict]:
        return PRESETS[self.task]

    def preset_value(self, key):
        return self.presets[self.preset][key]

    @property
    def step_bound(self) -> float | None:
        """The bound b on one optimizer update of a step size (qat/step_bound.py): --step-update-bound where
        given (0 = none), else the preset's; None when there is none."""
        b = self.step_update_bound if self.step_update_bound is not None else self.preset_value("step_update_bound")
        return b or None

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

    def to_dict(self) -> dict:
        """The run's configuration as recorded in its directory (config.json) and logged to W&B (`options`)."""
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


# RunConfig fields that override a preset's budgets (the FP run that trains a cached FP model takes none of them).
BUDGET_OVERRIDES = ("epochs", "lr", "batch_size", "train_subset", "imgsz", "fraction", "max_iterations")


def writes_fp_cache(cfg: "RunConfig") -> bool:
    """Whether an FP run trains its preset's cached FP model: the FP table's seed-0 run in its own directory with
    the preset's budgets. Any other FP run (a study with --epochs, another seed or table, --out) keeps its model in
    its run directory: a cached model always is what its recorded preset budgets say."""
    return (cfg.is_fp and cfg.out is None and cfg.table == FP_TABLE and cfg.seed == 0
            and all(getattr(cfg, k) is None for k in BUDGET_OVERRIDES))


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
FP_BUDGET_KEYS = ("dataset", "fmnist_det", "model_size", "imgsz", "batch_size", "fp_epochs", "fp_lr",
                  "fp_train_subset", "fp_warmup_epochs")


def check_fp_budgets(path: Path, trained_with: dict | None, preset: str, now: dict) -> None:
    """A cached FP model is named by model and preset, not by the preset's budgets: refuse one trained with
    other FP budgets than the preset sets now (an edited preset would reuse it silently)."""
    if trained_with is None:
        raise ValueError(f"the cached FP model {path} records no preset budgets (older code wrote it): delete it "
                         f"and its FP run (runs/{preset}/{FP_TABLE}/<model>) to train it again")
    changed = [k for k in FP_BUDGET_KEYS if k in trained_with and k in now and trained_with[k] != now[k]]
    if changed:
        was = ", ".join(f"{k}={trained_with[k]!r}" for k in changed)
        new = ", ".join(f"{k}={now[k]!r}" for k in changed)
        raise ValueError(f"the cached FP model {path} was trained with {was}, but the {preset} preset now sets {new}: "
                         f"delete it and its FP run (runs/{preset}/{FP_TABLE}/<model>) to train it again")
