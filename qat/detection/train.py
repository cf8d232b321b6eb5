"""Ultralytics detectors (YOLOv8 / YOLOv9) in the run lifecycle: `train_detector(cfg)` trains one run with
Ultralytics' loop (qat/detection/ultralytics_qat.py), started where qat/run/lifecycle.py says (fresh, resumed
or branched, the FP detector trained first when missing), and records its result.

A run is (detector, recipe, bits, seed, preset). The `smoke` and `proxy` presets train on FMNIST-Det
(generated and cached on first use, see docs/FMNIST_DET.md); `paper` takes an Ultralytics COCO data
yaml (`--data`), the COCO val annotations (`--val-json`) and a local FP checkpoint (`--fp-checkpoint`).
The cached FP detector: checkpoints/fp/{detector}-det-{preset}-{data digest}.pt, a copy of the FP run's own
`fp.pt` (so a finished FP run puts a deleted cache back).

Run directory: runs/{preset}/{table}/{detector}/{recipe}/w{b}a{b}/s{seed} (FP: .../fp/s{seed}), holding
the lifecycle's checkpoints, Ultralytics' files (results.csv), the W&B run, `config.json` + `.lock`
(qat/run_dir.py) and `result.json`, written last.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ..config import ULTRALYTICS_DETECTORS, RunConfig, detector_fp_cache, path_digest
from ..recipes import get_recipe
from ..run.lifecycle import CHECKPOINT, fp_weights, keep_fp_cache, start_point
from ..run.wall_clock import WallClock
from ..run_dir import claim, finished_result
from ..train import checkpoint

FP_MODEL = "fp.pt"  # an FP run's trained model (FP32 EMA weights, yaml, nc, imgsz, its mAP, its preset budgets)


def validate_config(c: RunConfig) -> None:
    if not c.is_fp:
        get_recipe(c.recipe)
        if not isinstance(c.bits, int) or not 2 <= c.bits <= 8:
            raise ValueError(f"bits must be an integer between 2 and 8, got {c.bits!r}")


def dataset_for(c: RunConfig) -> tuple[str, str | None, str]:
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
        return c.data, val_json, path_digest(c.data)
    name = c.preset_value("fmnist_det")
    if name is None:
        raise ValueError(f"the {c.preset} preset needs --data (an Ultralytics COCO data yaml) and --val-json")
    from ..data.fmnist_det import build_fmnist_det
    ds = build_fmnist_det(name)
    return str(ds.yaml), c.val_json or str(ds.coco_json("val")), ds.config.digest()[:8]


def train_detector(cfg: RunConfig) -> dict:
    """Run one Ultralytics detection run (FP pretraining or QAT with a recipe) and return its result dict
    (`qat.run.run` calls it for an Ultralytics detector's RunConfig).

    Results are in % (`map` = mAP@[.5:.95], `map50`), with `fp_map` (FP model), `fp_map_prologue`
    (after the BN fold), `init_map` (after quantizer init) and `map_trained` (before post steps).
    """
    torch.set_flush_denormal(True)  # as in classification: denormals slow CPU backward ~10×
    validate_config(cfg)
    with claim(cfg.run_dir, cfg.to_dict()):
        return _train(cfg)


def copy_fp_model(c: RunConfig, cache: Path) -> None:
    """Copy the FP run's own model (`FP_MODEL` in its run directory) to the cached FP detector's path."""
    own = c.run_dir / FP_MODEL
    if not own.is_file():
        raise FileNotFoundError(f"the cached FP detector {cache} is missing and the finished FP run {c.run_dir} keeps "
                                f"no {FP_MODEL} (older code): delete that run directory to train the FP model again")
    shutil.copyfile(own, cache)


def _train(c: RunConfig) -> dict:
    done = c.run_dir / "result.json"
    result = finished_result(c.run_dir)
    if result is not None:
        keep_fp_cache(c, lambda: detector_fp_cache(c.model, c.preset, dataset_for(c)[2]),
                      lambda cache: copy_fp_model(c, cache), finished_earlier=True)
        print(f"[qat] {c.run_name}: finished already ({done})", flush=True)
        return result
    clock = WallClock()  # where the run's wall time goes, kept in its result.json
    with clock.phase("data"):
        data_yaml, val_json, digest = dataset_for(c)
    init_from = None
    fp_ckpt = c.fp_checkpoint
    if not c.is_fp:
        with clock.phase("parent"):
            start = start_point(c, train_detector)  # trains a missing parent first
        if start.path is not None:  # a killed run (from its last epoch, or its trained model), or a branch
            init_from = ("end" if start.trained else "resume" if start.kind == "resume" else "tau", str(start.path))
        if init_from is None or fp_ckpt is not None:  # (a branch or resumed run brings its weights)
            with clock.phase("parent"):  # (an FP model missing from the cache is trained here)
                fp_ckpt = str(fp_weights(c, detector_fp_cache(c.model, c.preset, digest),
                                         lambda p: checkpoint.load(p, mmap=True).get("preset_values"), train_detector))

    from .ultralytics_qat import QATDetectionTrainer
    p = c.preset_value
    save_fp_to = None
    if c.is_fp:
        save_fp_to = str(c.run_dir / FP_MODEL)
    epochs = c.epochs or p("fp_epochs" if c.is_fp else "qat_epochs")
    overrides = dict(model=ULTRALYTICS_DETECTORS[c.model], data=data_yaml, epochs=epochs, imgsz=c.imgsz or p("imgsz"),
                     batch=c.batch_size or p("batch_size"), lr0=c.training_lr, seed=c.seed, device=c.device,
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
    trainer = QATDetectionTrainer.bind(c, init_from=init_from, fp_checkpoint=fp_ckpt, val_json=val_json,
                                       save_fp_to=save_fp_to, clock=clock)(overrides=overrides)
    trainer.train()
    result = {"model": c.model, "recipe": c.recipe, "bits": None if c.is_fp else c.bits, "seed": c.seed,
              "preset": c.preset, "table": c.table, "epochs": epochs, **trainer.results,
              "wall_s": time.time() - t0, **clock.result()}
    c.run_dir.mkdir(parents=True, exist_ok=True)
    keep_fp_cache(c, lambda: detector_fp_cache(c.model, c.preset, digest), lambda cache: copy_fp_model(c, cache))
    done.write_text(json.dumps(result, indent=1))
    checkpoint.drop_resume_checkpoint(c.run_dir / CHECKPOINT)
    return result
