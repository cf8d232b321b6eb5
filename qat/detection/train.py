"""Detection runs by name: `train_detector(...)` and `python -m qat.detection` (FP pretraining and QAT).

A run is (detector, recipe, bits, seed, preset). The `smoke` and `proxy` presets train on FMNIST-Det
(generated and cached on first use, see docs/FMNIST_DET.md); `paper` takes an Ultralytics COCO data
yaml (`--data`), the COCO val annotations (`--val-json`) and a local FP checkpoint (`--fp-checkpoint`).
QAT needs an FP model: for the proxy presets it is trained once and cached under
checkpoints/fp/{detector}-det-{preset}-{data digest}.pt (this module trains it when missing).

Run directory: runs/{preset}/{table}/{detector}/{recipe}/w{b}a{b}/s{seed} (FP: .../fp/s{seed}), holding
the Ultralytics run (weights/qat_*.pt checkpoints, results.csv), the W&B run, `config.json` + `.lock`
(qat/run_dir.py: one configuration, one process at a time) and `result.json`, written last: a run whose
result.json exists is not run again; an unfinished one continues with `--resume`
(from its last epoch, or from the trained model when it was killed in the post steps). Recipes that branch (SPEC: scalegrad+ead from
scalegrad at τ; adaround / step-only from a trained model) start from the parent run's checkpoint and
run the parent first when it is missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import torch

from ..config import FP_TABLE, PresetRun, check_fp_budgets, fp_cache_path
from ..prepare.pipeline import PrologueOptions
from ..recipes import MethodConfig, get_recipe
from ..run_dir import BUSY_EXIT, RunBusy, check_parent, claim, finished_result
from ..train import checkpoint

# Budgets per preset. The data set of the FMNIST-Det presets is the FMNIST-Det preset of the same name.
DET_PRESETS: dict[str, dict] = {
    # Seconds to minutes on a CPU: proves every path runs (tests, CI).
    "smoke": dict(dataset="fmnist-det", fmnist_det="smoke", imgsz=64, batch=8, fp_epochs=1, fp_lr=0.01, fp_warmup_epochs=0,
                  qat_epochs=2, qat_lr=1e-3, calib_batches=2, afw_epochs=0.5, qc_epochs=0.5,
                  adaround_iterations=10, step_only_epochs=0.5, close_mosaic=0, fraction=1.0, val_every_epoch=True,
                  bias_correction_batches=4),
    # One seed of a table in about 30 minutes of a 2-core CPU: FMNIST-Det "small" (3000 train / 250 val, 96 px),
    # FP 3 epochs, QAT 130 iterations (5 epochs of 416 training images), bias correction on 2 batches, mAP after
    # the last epoch only.
    "proxy": dict(dataset="fmnist-det", fmnist_det="small", imgsz=96, batch=16, fp_epochs=3, fp_lr=0.01, fp_warmup_epochs=1,
                  qat_epochs=5, fraction=416 / 3000, val_every_epoch=False, qat_lr=1e-3, calib_batches=8, afw_epochs=0.5,
                  qc_epochs=1, adaround_iterations=100, step_only_epochs=1, close_mosaic=1, bias_correction_batches=2),
    # FMNIST-Det proxy (4000 train / 500 val images, 128 px): the first committed results; hours per table.
    "proxy-long": dict(dataset="fmnist-det", fmnist_det="proxy", imgsz=128, batch=16, fp_epochs=4, fp_lr=0.01, fp_warmup_epochs=1,
                       qat_epochs=5, fraction=1.0, val_every_epoch=True, qat_lr=1e-3, calib_batches=16, afw_epochs=0.5,
                       qc_epochs=1, adaround_iterations=300, step_only_epochs=1, close_mosaic=2, bias_correction_batches=4),
    # The same data with the budgets one GPU affords.
    "proxy-gpu": dict(dataset="fmnist-det", fmnist_det="proxy", imgsz=128, batch=64, fp_epochs=100, fp_lr=0.01, fp_warmup_epochs=3,
                      qat_epochs=30, fraction=1.0, val_every_epoch=True, qat_lr=1e-3, calib_batches=32, afw_epochs=3, qc_epochs=1,
                      adaround_iterations=2000, step_only_epochs=2, close_mosaic=5, bias_correction_batches=4),
    # The paper (§V): COCO 2017, SGD lr 1e-3 momentum 0.9 wd 1e-5, 80 ScaleGrad + 20 EAD epochs + 10 AFW;
    # FP weights from a local checkpoint (ours or an Ultralytics .pt).
    "paper": dict(dataset="coco", fmnist_det=None, imgsz=640, batch=64, fp_epochs=None, fp_lr=None, fp_warmup_epochs=3,
                  qat_epochs=100, fraction=1.0, val_every_epoch=True, qat_lr=1e-3, calib_batches=32, afw_epochs=10, qc_epochs=1,
                  adaround_iterations=10000, step_only_epochs=1, close_mosaic=10, bias_correction_batches=4),
}


@dataclasses.dataclass
class DetectionConfig(PresetRun):
    model: str = "yolov8n"
    recipe: str = "lsq"                  # or "fp" for FP pretraining
    bits: int = 4
    seed: int = 0
    preset: str = "proxy"
    table: str = "adhoc"
    data: str | None = None              # Ultralytics data yaml (paper preset); FMNIST-Det otherwise
    val_json: str | None = None          # COCO ground truth of the val split (default: the yaml's val_json)
    fp_checkpoint: str | None = None
    out: str | None = None               # run directory; default runs/{preset}/{run name}
    resume: bool = False                 # continue an unfinished run from its last checkpoint
    device: str = "auto"                 # "auto", "cpu", or an Ultralytics device string ("0", "0,1")
    wandb: bool = True
    quantize_first_last: bool = False
    first_last_bits: int = 8
    cle: bool = False                    # CLE needs ReLU-like activations; YOLO has SiLU
    bias_correction: bool = True
    epochs: int | None = None
    lr: float | None = None
    batch: int | None = None
    imgsz: int | None = None
    fraction: float | None = None        # share of the training images used per QAT epoch (default: the preset's)
    weight_decay: float = 1e-5
    momentum: float = 0.9
    ead_fraction: float = 0.2
    max_iterations: int | None = None
    fig1_iterations: int = 200
    workers: int = 0
    methods: MethodConfig = dataclasses.field(default_factory=MethodConfig)
    presets: ClassVar[dict[str, dict]] = DET_PRESETS


def validate_config(c: DetectionConfig) -> None:
    from .ultralytics_qat import DETECTORS
    if c.model not in DETECTORS:
        raise ValueError(f"unknown detector {c.model!r}; choose from: {', '.join(DETECTORS)}")
    if c.preset not in DET_PRESETS:
        raise ValueError(f"unknown preset {c.preset!r}; choose from: {', '.join(DET_PRESETS)}")
    if not c.is_fp:
        get_recipe(c.recipe)
        if not isinstance(c.bits, int) or not 2 <= c.bits <= 8:
            raise ValueError(f"bits must be an integer between 2 and 8, got {c.bits!r}")


def dataset_for(c: DetectionConfig) -> tuple[str, str | None, str]:
    """(data yaml, val COCO json, short digest of the data) of a run."""
    if c.data:
        if not Path(c.data).is_file():
            raise FileNotFoundError(f"data yaml not found: {c.data}")
        import yaml
        val_json = c.val_json or (yaml.safe_load(Path(c.data).read_text()) or {}).get("val_json")
        if not val_json:
            raise ValueError(f"--val-json is needed: the COCO annotations of the val split of {c.data} "
                             f"(e.g. annotations/instances_val2017.json)")
        if not Path(val_json).is_file():
            raise FileNotFoundError(f"COCO annotations not found: {val_json}")
        return c.data, val_json, _digest(Path(c.data).resolve().as_posix())
    name = c.preset_value("fmnist_det")
    if name is None:
        raise ValueError(f"the {c.preset} preset needs --data (an Ultralytics COCO data yaml) and --val-json")
    from ..data.fmnist_det import build_fmnist_det
    ds = build_fmnist_det(name)
    return str(ds.yaml), c.val_json or str(ds.coco_json("val")), ds.config.digest()[:8]


def _digest(text: str) -> str:
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def fp_detector_path(c: DetectionConfig, data_digest: str) -> Path:
    return fp_cache_path(f"{c.model}-det", f"{c.preset}-{data_digest}")


def train_detector(cfg: DetectionConfig | None = None, **kwargs) -> dict:
    """Run one detection run (FP pretraining or QAT with a recipe) and return its result dict.

    Example: `train_detector(model="yolov8n", recipe="scalegrad+ead+afw", bits=4, preset="proxy")`.
    Results are in % (`map` = mAP@[.5:.95], `map50`), with `fp_map` (FP model), `fp_map_prologue`
    (after the BN fold), `init_map` (after quantizer init) and `map_trained` (before post steps).
    """
    c = replace(cfg, **kwargs) if cfg is not None else DetectionConfig(**kwargs)
    torch.set_flush_denormal(True)  # as in classification: denormals slow CPU backward ~10×
    validate_config(c)
    with claim(c.run_dir, logged_config(c)):
        return _train(c)


def logged_config(c: DetectionConfig) -> dict:
    """The run's configuration as logged to W&B and recorded in its directory."""
    return {"detection_config": _jsonable(dataclasses.asdict(c)), "preset_values": dict(DET_PRESETS[c.preset])}


def _train(c: DetectionConfig) -> dict:
    done = c.run_dir / "result.json"
    result = finished_result(c.run_dir)
    if result is not None:
        print(f"[qat] {c.run_name}: finished already ({done})", flush=True)
        return result
    data_yaml, val_json, digest = dataset_for(c)
    init_from = None
    fp_ckpt = c.fp_checkpoint
    if not c.is_fp:
        recipe = get_recipe(c.recipe)
        trained, last = c.run_dir / "weights" / "qat_trained.pt", c.run_dir / "weights" / "qat_last.pt"
        if (trained.is_file() or last.is_file()) and not c.resume:
            raise ValueError(f"{c.run_dir} holds a checkpoint of an unfinished run: pass --resume to continue it "
                             f"or delete the directory")
        if trained.is_file():  # killed in the post steps: redo them from the trained model
            init_from = ("end", str(trained))
        elif last.is_file():  # killed while training: continue from the last epoch
            init_from = ("resume", str(last))
        elif recipe.branch_from is not None:
            init_from = _parent_checkpoint(c, *recipe.branch_from)
        if fp_ckpt is None and init_from is None:
            fp_ckpt = str(fp_detector_path(c, digest))
            if not Path(fp_ckpt).is_file():
                if c.preset_value("fp_epochs") is None:
                    raise FileNotFoundError(f"the {c.preset} preset needs --fp-checkpoint (trained FP weights)")
                print(f"[qat] no cached FP detector at {fp_ckpt}: training it first", flush=True)
                train_detector(replace(c, recipe="fp", out=None, table=FP_TABLE, epochs=None, lr=None,
                                       max_iterations=None, resume=True))
        if fp_ckpt is not None and not Path(fp_ckpt).is_file():
            raise FileNotFoundError(f"FP checkpoint not found: {fp_ckpt}")
        if fp_ckpt is not None and c.fp_checkpoint is None:  # our cached FP detector (the trainer loads its weights)
            check_fp_budgets(Path(fp_ckpt), checkpoint.load(fp_ckpt, mmap=True).get("preset_values"), c.preset,
                             DET_PRESETS[c.preset])

    from .ultralytics_qat import DETECTORS, DetectionRun, QATDetectionTrainer
    p = c.preset_value
    m = c.methods
    if not c.is_fp:  # post-step budgets left unset take the preset's value
        budgets = ("afw_epochs", "qc_epochs", "adaround_iterations", "step_only_epochs")
        m = replace(m, **{k: p(k) for k in budgets if getattr(m, k) is None})
    run = DetectionRun(
        recipe=c.recipe, bits=c.bits, methods=m,
        prologue=PrologueOptions(cle=c.cle, bias_correction=c.bias_correction,
                                 quantize_first_last=c.quantize_first_last, first_last_bits=c.first_last_bits,
                                 calib_batches=p("calib_batches"),
                                 bias_correction_batches=p("bias_correction_batches")),
        fp_checkpoint=fp_ckpt, init_from=init_from,
        save_fp_to=str(fp_detector_path(c, digest)) if c.is_fp and c.out is None else
        (str(c.run_dir / "fp.pt") if c.is_fp else None),
        val_json=val_json, ead_fraction=c.ead_fraction, max_iterations=c.max_iterations,
        fig1_iterations=c.fig1_iterations, wandb=c.wandb, name=c.run_name, group=c.table, preset=c.preset,
        tags=(c.model, c.recipe) + (() if c.is_fp else (f"w{c.bits}a{c.bits}",)) + (c.preset,),
        config=logged_config(c))
    epochs = c.epochs or p("fp_epochs" if c.is_fp else "qat_epochs")
    overrides = dict(model=DETECTORS[c.model], data=data_yaml, epochs=epochs, imgsz=c.imgsz or p("imgsz"),
                     batch=c.batch or p("batch"), lr0=c.training_lr, seed=c.seed, device=c.device,
                     workers=c.workers, project=str(c.run_dir.parent), name=c.run_dir.name, exist_ok=True,
                     close_mosaic=p("close_mosaic"), deterministic=True)
    if c.is_fp:  # Ultralytics' own recipe (optimizer "auto", its weight decay), a shorter warm-up, all images
        overrides.update(warmup_epochs=p("fp_warmup_epochs"), fraction=c.fraction or 1.0)
    else:  # val=False: Ultralytics still validates after the last epoch
        overrides.update(weight_decay=c.weight_decay, momentum=c.momentum, fraction=c.fraction or p("fraction"),
                         val=p("val_every_epoch"))
    if c.device in ("", "auto", None):  # Ultralytics picks the GPU when there is one
        overrides.pop("device")
    elif c.device.startswith("cuda"):  # torch names -> Ultralytics' ("cuda" -> "0", "cuda:1" -> "1")
        overrides["device"] = c.device.partition(":")[2] or "0"
    t0 = time.time()
    trainer = QATDetectionTrainer.bind(run)(overrides=overrides)
    trainer.train()
    result = {"model": c.model, "recipe": c.recipe, "bits": None if c.is_fp else c.bits, "seed": c.seed,
              "preset": c.preset, "table": c.table, "epochs": epochs, **trainer.results,
              "wall_s": time.time() - t0}
    c.run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1))
    checkpoint.drop_resume_checkpoint(c.run_dir / "weights" / "qat_last.pt")
    return result


def _parent_checkpoint(c: DetectionConfig, parent_recipe: str, point: str) -> tuple[str, str]:
    parent = replace(c, recipe=parent_recipe, out=None, resume=True)
    if c.out:  # keep ad-hoc output trees self-contained
        parent = replace(parent, out=str(Path(c.out).parent / parent_recipe.replace("/", "_")))
    path = parent.run_dir / "weights" / ("qat_tau.pt" if point == "tau" else "qat_trained.pt")
    if path.is_file():  # (a parent run trained here checks its directory itself)
        check_parent(parent.run_dir, logged_config(parent), c.recipe, point)
    else:
        print(f"[qat] {c.recipe} branches from {parent_recipe} at {point}: running it first", flush=True)
        train_detector(parent)
    if not path.is_file():
        raise FileNotFoundError(f"parent run {parent.run_dir} left no {path.name}")
    return ("tau" if point == "tau" else "end", str(path))


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


# ------------------------------------------------------------------------------------------------ CLI

def build_parser() -> argparse.ArgumentParser:
    """The classification CLI's options (qat/cli.py: checked values, help text and defaults) for DetectionConfig;
    --device also takes Ultralytics' GPU ids."""
    from ..cli import build_parser as run_parser
    from .torch_detectors import TORCH_DETECTORS
    from .ultralytics_qat import DETECTORS
    return run_parser(DetectionConfig, models=sorted([*DETECTORS, *TORCH_DETECTORS]), prog="python -m qat.detection",
                      description=__doc__, ultralytics_ids=True)


def parse_config(argv=None) -> DetectionConfig:
    """The DetectionConfig of a command line (Ultralytics detectors); bad input exits with one `error:` line."""
    from ..cli import parse_config as parse_run_config
    return parse_run_config(argv, DetectionConfig, parser=build_parser())


def main(argv=None) -> int:
    from .torch_detectors import TORCH_DETECTORS
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    if pre.parse_known_args(argv)[0].model in TORCH_DETECTORS:  # SSD / YOLOX: our own loop (torch_train.py)
        from .torch_train import main as torch_main
        return torch_main(argv)
    cfg = parse_config(argv)
    from ..train.checkpoint import CheckpointError
    from .ultralytics_qat import NonFiniteLoss
    try:
        result = train_detector(cfg)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except RunBusy as e:
        sys.stderr.write(f"error: {e}\n")
        return BUSY_EXIT
    except NonFiniteLoss as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    print(json.dumps(result, indent=1))
    return 0
