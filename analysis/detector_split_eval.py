#!/usr/bin/env python
"""COCO mAP of finished Ultralytics QAT detection runs' final models on another FMNIST-Det split ("calib": images
rendered from Fashion-MNIST's held-out calibration slice, docs/FMNIST_DET.md), so that choices the paper leaves
open are made without looking at val, the split the tables report.

The model is rebuilt from the run directory as the exporter rebuilds it (`qat.export.detector.load_detector_run`:
the recorded structure, `final.pt`'s weights, frozen codes) and evaluated as the run evaluates (our COCO
evaluator on Ultralytics' val-mode loader, conf 0.001, IoU 0.7, 300 detections). `--check-val` also evaluates
each model on val and stops if that differs from the run's recorded mAP: the rebuilt model is the run's.

    python analysis/detector_split_eval.py runs/proxy/table5/yolov8n/lsq/w4a4/s0 --split calib --check-val
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

CHECK_TOLERANCE = 0.01  # mAP points: the recomputed val mAP against the run's result.json


def split_loader(images: Path, data: dict, imgsz: int, batch: int = 32):
    """Ultralytics' val-mode loader over an image folder (no augmentation, letterboxed to `imgsz`)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader, build_yolo_dataset
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch})
    dataset = build_yolo_dataset(cfg, str(images), batch, data, mode="val", rect=True, stride=32)
    return build_dataloader(dataset, batch, workers=0, shuffle=False, rank=-1, device="cpu")


def evaluate_on_splits(run_dir: Path, splits: list[str]) -> dict[str, float]:
    """Split → mAP@[.5:.95] (%) of the run's final model (rebuilt once) on that split of its FMNIST-Det set."""
    from qat.data.fmnist_det import SPLITS, build_fmnist_det
    from qat.detection.coco_eval import coco_map, load_coco
    from qat.detection.ultralytics_qat import yolo_detections
    from qat.export.detector import load_detector_run
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise SystemExit(f"error: unknown split {unknown[0]!r}; FMNIST-Det has {', '.join(SPLITS)}")
    recorded = json.loads((run_dir / "config.json").read_text())
    preset = recorded.get("preset_values", {})
    if recorded.get("data") or not preset.get("fmnist_det"):
        raise SystemExit(f"error: {run_dir} did not train on an FMNIST-Det preset set; this evaluates those only")
    wrapped, spec, _, _ = load_detector_run(run_dir, recorded)
    ds = build_fmnist_det(preset["fmnist_det"])
    data = {"nc": spec["nc"], "channels": spec["channels"], "names": {i: str(i) for i in range(spec["nc"])}}
    maps = {}
    for split in splits:
        coco = load_coco(str(ds.coco_json(split)))
        ids = {Path(img["file_name"]).name: img["id"] for img in coco.dataset["images"]}
        with torch.no_grad():
            dets = yolo_detections(wrapped.detector, split_loader(ds.images(split), data, spec["imgsz"]), "cpu", ids,
                                   sorted(coco.getCatIds()))
        maps[split] = 100 * coco_map(dets, coco)["map"]
    return maps


def evaluate_on_split(run_dir: Path, split: str) -> float:
    """mAP@[.5:.95] (%) of the run's final model on `split` of the run's FMNIST-Det set."""
    return evaluate_on_splits(run_dir, [split])[split]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="finished Ultralytics QAT run directories")
    p.add_argument("--split", default="calib")
    p.add_argument("--check-val", action="store_true", help="also recompute val mAP and compare with the run's")
    a = p.parse_args(argv)
    for run_dir in a.runs:
        maps = evaluate_on_splits(run_dir, [a.split, "val"] if a.check_val else [a.split])
        line = f"{run_dir}  {a.split} mAP {maps[a.split]:.2f}"
        if a.check_val:
            recorded = json.loads((run_dir / "result.json").read_text())["map"]
            val = maps["val"]
            if abs(val - recorded) > CHECK_TOLERANCE:
                raise SystemExit(f"error: {run_dir}: val mAP of the rebuilt model {val:.3f} ≠ the run's {recorded:.3f}")
            line += f"  val mAP {val:.2f} (= the run's)"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
