"""The one detection evaluator: COCO mAP@[.5:.95] and mAP@.5 with pycocotools, for every detector.

Input is a list of detections in COCO result form — {"image_id", "category_id", "bbox": [x, y, w, h]
in pixels of the original image, "score"} — and the ground truth as a COCO JSON (path, dict or a
`pycocotools.coco.COCO`). Every ground-truth image is evaluated (an image with no detection counts as
all misses), with COCO's standard settings: 101-point interpolated precision, maxDets 100, area "all".
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from typing import Iterable

STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
              "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")


def load_coco(gt):
    """A pycocotools COCO from a path, a dict or a COCO (returned as is); its index printout silenced."""
    from pycocotools.coco import COCO

    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        with open(gt) as f:
            gt = json.load(f)
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_map(detections: Iterable[dict], gt, *, verbose: bool = False) -> dict:
    """COCO box metrics of `detections` against `gt`.

    Returns fractions in [0, 1] under STAT_NAMES (`map` = mAP@[.5:.95], `map50` = mAP@.5, ...) and
    `metric` = 100·mAP@[.5:.95] (the headline number tables print). No detection at all gives zeros.
    """
    from pycocotools.cocoeval import COCOeval

    coco_gt = load_coco(gt)
    dets = [_clean(d) for d in detections]
    if not dets:
        stats = dict.fromkeys(STAT_NAMES, 0.0)
        return {**stats, "metric": 0.0}
    known = set(coco_gt.getImgIds())
    unknown = {d["image_id"] for d in dets} - known
    if unknown:
        raise ValueError(f"coco_map: detections for image ids not in the ground truth: {sorted(unknown)[:5]}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(out.getvalue())
    stats = {name: float(max(v, 0.0)) for name, v in zip(STAT_NAMES, ev.stats)}  # -1 = no GT in that range
    return {**stats, "metric": 100.0 * stats["map"]}


def _clean(d: dict) -> dict:
    x, y, w, h = (float(v) for v in d["bbox"])
    return {"image_id": int(d["image_id"]), "category_id": int(d["category_id"]), "bbox": [x, y, w, h],
            "score": float(d["score"])}
