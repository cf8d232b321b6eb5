"""COCO-format detection batches for the detectors trained by our own loop (SSD-MobileNetV2, YOLOX).

One reader for FMNIST-Det (proxy) and MS COCO (paper): an image directory plus a COCO instances JSON.
Each image is letterboxed to `imgsz`×`imgsz` (longer side scaled to `imgsz`, aspect kept, padded right
and bottom), so a box maps back to the original image by dividing by the scale alone. Training batches
flip horizontally with probability 0.5; epoch order and flips come from (seed, epoch), so every run and
every resume sees the same batches; under torch.distributed each rank takes every world-th image of
the global order (the batch size is the global one).

A batch is `(images, targets, info)`: images float [B, 3, S, S] in [0, 1]; targets a list of
{"boxes": float [n, 4] xyxy in input pixels, "labels": int64 [n] in 0..C−1}; info a list of
(COCO image id, scale).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image


class CocoDetectionSet(torch.utils.data.Dataset):
    """Images and boxes of one split; item (index, flip) → (image, target, (image id, scale))."""

    def __init__(self, images_dir: str | Path, ann_json: str | Path, imgsz: int):
        self.images_dir, self.ann_json, self.imgsz = Path(images_dir), Path(ann_json), imgsz
        if not self.ann_json.is_file():
            raise FileNotFoundError(f"COCO annotations not found: {self.ann_json}")
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"image directory not found: {self.images_dir}")
        coco = json.loads(self.ann_json.read_text())
        self.cat_ids = sorted(c["id"] for c in coco["categories"])
        label_of = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.images = sorted(coco["images"], key=lambda im: im["id"])
        boxes: dict[int, list] = {im["id"]: [] for im in self.images}
        for a in coco["annotations"]:
            if a.get("iscrowd", 0) or a["bbox"][2] <= 1 or a["bbox"][3] <= 1:
                continue  # crowd regions and degenerate boxes are not training targets (COCO eval ignores crowds)
            x, y, w, h = a["bbox"]
            boxes[a["image_id"]].append((x, y, x + w, y + h, label_of[a["category_id"]]))
        self.boxes = [np.asarray(boxes[im["id"]], dtype=np.float32).reshape(-1, 5) for im in self.images]

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, bool]):
        index, flip = item
        meta = self.images[index]
        img = decode_image(str(self.images_dir / meta["file_name"]), mode=ImageReadMode.RGB)
        h, w = img.shape[1:]
        scale = self.imgsz / max(h, w)
        x = img.float().div_(255).unsqueeze(0)
        if scale != 1.0:
            x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", align_corners=False,
                              antialias=scale < 1)
        canvas = torch.zeros(3, self.imgsz, self.imgsz)
        canvas[:, :x.shape[2], :x.shape[3]] = x[0]
        b = torch.from_numpy(self.boxes[index])
        boxes, labels = b[:, :4] * scale, b[:, 4].long()
        if flip:
            canvas = canvas.flip(-1)
            boxes = torch.stack([self.imgsz - boxes[:, 2], boxes[:, 1], self.imgsz - boxes[:, 0], boxes[:, 3]], 1)
        return canvas, {"boxes": boxes, "labels": labels}, (meta["id"], scale)


def collate(items):
    images, targets, info = zip(*items)
    return torch.stack(images), list(targets), list(info)


class DetectionBatches:
    """Deterministic, rank-sharded batches of a CocoDetectionSet (the classification batches' contract)."""

    def __init__(self, dataset: CocoDetectionSet, batch_size: int, seed: int, shuffle: bool, flip: bool,
                 subset: int | None = None, rank: int = 0, world: int = 1, workers: int = 0):
        self.dataset, self.seed, self.shuffle, self.flip, self.workers = dataset, seed, shuffle, flip, workers
        self.batch_size = max(1, batch_size // world)
        self.rank, self.world = rank, world
        self.indices = np.arange(len(dataset)) if subset is None else np.arange(min(subset, len(dataset)))

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.indices) / self.world) / self.batch_size)

    def _items(self, epoch: int) -> list[tuple[int, bool]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.indices) if self.shuffle else self.indices
        flips = rng.random(len(order)) < 0.5 if self.flip else np.zeros(len(order), bool)
        return [(int(i), bool(f)) for i, f in zip(order, flips)][self.rank::self.world]

    def epoch(self, e: int):
        loader = torch.utils.data.DataLoader(self._items(e), batch_size=self.batch_size, num_workers=self.workers,
                                             collate_fn=lambda items: collate([self.dataset[it] for it in items]))
        yield from loader


def layout(root: str | Path) -> tuple[Path, Path, tuple[str, str]]:
    """(image root, annotation dir, (train split, val split)) of a data root: FMNIST-Det's layout
    (images/{train,val}/, annotations/instances_{train,val}.json) or COCO 2017's (train2017/, val2017/,
    annotations/instances_{train,val}2017.json)."""
    root = Path(root)
    if (root / "images" / "train").is_dir():
        return root / "images", root / "annotations", ("train", "val")
    if (root / "train2017").is_dir() or (root / "annotations" / "instances_val2017.json").is_file():
        return root, root / "annotations", ("train2017", "val2017")
    raise FileNotFoundError(f"{root} is neither a COCO 2017 root (train2017/, val2017/, annotations/) nor an "
                            f"FMNIST-Det root (images/train/, images/val/, annotations/)")


def detection_data(images_root: str | Path, ann_dir: str | Path, imgsz: int, batch_size: int, seed: int,
                   train_subset: int | None = None, rank: int = 0, world: int = 1, workers: int = 0,
                   split_names: tuple[str, str] = ("train", "val")):
    """(train, calibration, val) batches of a COCO-format set: images_root/{split}/, ann_dir/instances_{split}.json.

    Calibration batches are unflipped training images in a fixed shuffled order (its own seed).
    Every rank evaluates the whole val split (COCO mAP is not a sum over shards).
    """
    train_name, val_name = split_names
    train_set = CocoDetectionSet(Path(images_root) / train_name, Path(ann_dir) / f"instances_{train_name}.json", imgsz)
    val_set = CocoDetectionSet(Path(images_root) / val_name, Path(ann_dir) / f"instances_{val_name}.json", imgsz)
    if train_set.cat_ids != val_set.cat_ids:
        raise ValueError(f"train and val annotations list different categories ({ann_dir})")
    train = DetectionBatches(train_set, batch_size, seed, True, True, train_subset, rank, world, workers)
    calib = DetectionBatches(train_set, batch_size, 2**31 - 1, True, False, train_subset, 0, 1, workers)
    val = DetectionBatches(val_set, batch_size, seed, False, False, None, 0, 1, workers)
    return train, calib, val
