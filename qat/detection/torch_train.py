"""SSD-MobileNetV2 and YOLOX through the classification training loop (`python -m qat.run --model yolox_nano`).

The loop, resume, branching, DDP, W&B logging, the prologue and every recipe's hooks and post steps are
the classification Trainer's (qat/train/classification.py); this subclass swaps the task: COCO-format
detection batches (qat/data/detection.py), the detector's own loss, and COCO mAP@[.5:.95] from the one
evaluator (qat/detection/coco_eval.py) as the headline metric `map` (in %).

Data: FMNIST-Det at the smoke/proxy presets (generated on first use); MS COCO at the paper preset
(`--data` = the COCO root with train2017/, val2017/ and annotations/instances_{train,val}2017.json,
plus `--fp-checkpoint`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import detector_fp_cache, path_digest
from ..data.detection import detection_data, layout
from ..train.classification import Trainer, bare
from .coco_eval import coco_map
from .torch_detectors import build_torch_detector


class TorchDetectionTrainer(Trainer):
    metric = "map"
    task = "detection"

    def setup_data(self):
        c = self.cfg
        if c.data:  # a COCO 2017 root, or any set in FMNIST-Det's layout
            images, annotations, splits = layout(c.data)
            self.data_digest = path_digest(c.data)
        elif c.preset_value("dataset") == "coco":
            raise ValueError("the paper preset needs --data pointing at a COCO root "
                             "(train2017/, val2017/, annotations/instances_{train,val}2017.json)")
        else:
            from ..data.fmnist_det import build_fmnist_det
            ds = build_fmnist_det(c.preset_value("fmnist_det"))
            images, annotations, splits = layout(ds.root)
            self.data_digest = ds.config.digest()[:8]
        self.val_json = annotations / f"instances_{splits[1]}.json"
        train, calib, val = detection_data(images, annotations, self.imgsz, self.batch_size, c.seed,
                                           self.train_subset(), self.rank, self.world, c.workers, splits)
        self.cat_ids = val.dataset.cat_ids
        return train, calib, val

    @property
    def imgsz(self) -> int:
        return self.cfg.imgsz or self.cfg.preset_value("imgsz")

    def fp_cache(self) -> Path:
        return detector_fp_cache(self.cfg.model, self.cfg.preset, self.data_digest)

    def build_net(self) -> nn.Module:
        return build_torch_detector(self.cfg.model, len(self.cat_ids), self.imgsz)

    def move(self, batch):
        x, targets, info = batch
        dev = self.device
        return (x.to(dev, non_blocking=True),
                [{"boxes": t["boxes"].to(dev), "labels": t["labels"].to(dev)} for t in targets], info)

    def batch_loss(self, model, batch):
        x, targets, _ = batch
        return model(x, targets), len(x), None

    def high_precision_layers(self, model: nn.Module) -> list[str]:
        return bare(model).high_precision_layers()

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict:
        """COCO mAP of the whole val split (every rank evaluates it all: mAP is not a sum over shards)."""
        model = bare(model)
        was_training = model.training
        model.eval()
        dets = []
        try:
            for batch in self.test_data.epoch(0):
                x, _, info = self.move(batch)
                for d, (image_id, scale) in zip(model.detect(x), info):
                    boxes = (d["boxes"] / scale).tolist()
                    for (x1, y1, x2, y2), s, label in zip(boxes, d["scores"].tolist(), d["labels"].tolist()):
                        dets.append({"image_id": image_id, "category_id": self.cat_ids[label],
                                     "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
        finally:
            model.train(was_training)
        res = coco_map(dets, self.val_json)
        return {"metric": res["metric"], "map": res["metric"], "map50": 100 * res["map50"]}
