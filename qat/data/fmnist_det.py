"""FMNIST-Det: the detection proxy — real Fashion-MNIST items pasted onto noisy canvases.

Deterministic (image i of split s draws everything from `default_rng([seed, s, i])`), cached under
`$QAT_DATA/fmnist-det/`, written both as COCO JSON and as an Ultralytics dataset. docs/FMNIST_DET.md
describes how an image is made, the sizes and the file layout.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from . import fashion_mnist as fm

GENERATOR_VERSION = 2
# "calib": images of the same kind, rendered from Fashion-MNIST's held-out calibration slice (never trained on,
# not the test set): where choices the paper leaves open are made without looking at val (docs/FMNIST_DET.md).
SPLITS = ("train", "val", "calib")
PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class FMNISTDetConfig:
    train_size: int = 4000
    val_size: int = 500
    canvas: int = 128
    min_size: int = 12          # longer side of an item, px (log-uniform between min and max)
    max_size: int = 64
    min_objects: int = 1
    max_objects: int = 6
    max_overlap: float = 0.3    # intersection / area of the smaller box, against every earlier item
    seed: int = 0

    def validate(self) -> None:
        if min(self.train_size, self.val_size) < 1:
            raise ValueError("FMNIST-Det needs at least one train and one val image")
        if not 4 <= self.min_size <= self.max_size <= self.canvas:
            raise ValueError(f"FMNIST-Det item sizes must satisfy 4 <= min_size <= max_size <= canvas, got "
                             f"{self.min_size}, {self.max_size}, {self.canvas}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"FMNIST-Det needs 1 <= min_objects <= max_objects, got {self.min_objects}, "
                             f"{self.max_objects}")
        if not 0.0 <= self.max_overlap <= 1.0:
            raise ValueError(f"max_overlap must be in [0, 1], got {self.max_overlap}")

    def digest(self) -> str:
        text = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def dirname(self) -> str:
        return f"c{self.canvas}_n{self.train_size}-{self.val_size}_s{self.seed}_{self.digest()[:8]}"


PRESETS: dict[str, FMNISTDetConfig] = {
    "smoke": FMNISTDetConfig(train_size=48, val_size=24),
    "proxy": FMNISTDetConfig(),
    # 96 px canvases, items scaled with the canvas: the 30-minute proxy preset (0.56× the pixels of "proxy").
    "small": FMNISTDetConfig(train_size=3000, val_size=250, canvas=96, min_size=9, max_size=48),
}


@dataclass(frozen=True)
class FMNISTDet:
    root: Path
    config: FMNISTDetConfig

    def images(self, split: str) -> Path:
        return self.root / "images" / split

    def labels(self, split: str) -> Path:
        return self.root / "labels" / split

    def coco_json(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    @property
    def yaml(self) -> Path:
        return self.root / "data.yaml"


# ------------------------------------------------------------------------------------- rendering
def tight_crop(item: np.ndarray) -> np.ndarray:
    """The item cut to the bounding box of its non-zero pixels."""
    ys, xs = np.nonzero(item)
    if len(ys) == 0:
        return item[:0, :0]
    return item[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _overlap_too_big(box, others, limit: float) -> bool:
    x, y, w, h = box
    for ox, oy, ow, oh in others:
        iw = max(0, min(x + w, ox + ow) - max(x, ox))
        ih = max(0, min(y + h, oy + oh) - max(y, oy))
        if iw * ih > limit * min(w * h, ow * oh):
            return True
    return False


def render_image(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, cfg: FMNISTDetConfig):
    """One canvas: (uint8 RGB image [H, W, 3], boxes [(x, y, w, h)] in pixels, class indices)."""
    s = cfg.canvas
    background = rng.uniform(0, 60) + rng.normal(0, 8, size=(s, s))
    canvas = np.repeat(background[:, :, None], 3, axis=2)
    boxes, classes, placed = [], [], []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        k = int(rng.integers(len(items)))
        crop = tight_crop(items[k])
        side = float(np.exp(rng.uniform(np.log(cfg.min_size), np.log(cfg.max_size))))
        tint = rng.uniform(0.6, 1.0, size=3)
        if crop.size == 0:
            continue
        scale = side / max(crop.shape)
        h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
        for _ in range(PLACEMENT_TRIES):
            x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
            if not _overlap_too_big((x, y, w, h), placed, cfg.max_overlap):
                break
        else:
            continue  # never fits: dropped
        gray = np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR), dtype=np.float64)
        mask = Image.fromarray(((crop > 0) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        alpha = np.asarray(mask, dtype=np.float64) / 255.0
        region = canvas[y:y + h, x:x + w]
        region[:] = region * (1 - alpha[..., None]) + alpha[..., None] * gray[..., None] * tint
        ys, xs = np.nonzero(alpha >= 0.5)
        if len(ys) == 0:
            continue
        placed.append((x, y, w, h))
        boxes.append((x + int(xs.min()), y + int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)))
        classes.append(int(labels[k]))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), boxes, classes


# ------------------------------------------------------------------------------------- writing
def _source(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Train items: the Fashion-MNIST training images outside the calibration slice; calib: that slice; val: the
    test set."""
    if split in ("train", "calib"):
        images, labels = fm.load_split("train")
        idx = fm.train_indices() if split == "train" else fm.calibration_indices()
        return images[idx], labels[idx]
    return fm.load_split("test")


def split_size(cfg: FMNISTDetConfig, split: str) -> int:
    """Images in `split`: calib has as many as val."""
    return cfg.train_size if split == "train" else cfg.val_size


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write(cfg: FMNISTDetConfig, root: Path) -> dict:
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(fm.CLASSES)]
    counts = {}
    for s_index, split in enumerate(SPLITS):
        items, labels = _source(split)
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        images, annotations = [], []
        for i in range(split_size(cfg, split)):
            image, boxes, classes = render_image(np.random.default_rng([cfg.seed, s_index, i]), items, labels, cfg)
            image_id, stem = i + 1, f"{i + 1:06d}"
            Image.fromarray(image).save(root / "images" / split / f"{stem}.png")
            images.append({"id": image_id, "file_name": f"{stem}.png", "width": cfg.canvas, "height": cfg.canvas})
            rows = []
            for (x, y, w, h), cls in zip(boxes, classes):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
                s = cfg.canvas
                rows.append(f"{cls} {(x + w / 2) / s:.6f} {(y + h / 2) / s:.6f} {w / s:.6f} {h / s:.6f}")
            (root / "labels" / split / f"{stem}.txt").write_text("".join(r + "\n" for r in rows))
        (root / "annotations").mkdir(exist_ok=True)
        coco = {"info": {"description": "FMNIST-Det", "version": GENERATOR_VERSION}, "images": images,
                "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        counts[split] = {"images": len(images), "objects": len(annotations)}
    return counts


def _yaml_text(root: Path) -> str:
    spec = {"path": str(root), "train": "images/train", "val": "images/val", "calib": str(root / "images" / "calib"),
            "channels": 3, "names": {i: name for i, name in enumerate(fm.CLASSES)},
            **{f"{split}_json": str(root / "annotations" / f"instances_{split}.json") for split in SPLITS}}
    return yaml.safe_dump(spec, sort_keys=False)


def _is_valid(ds: FMNISTDet) -> bool:
    try:
        manifest = json.loads((ds.root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("hash") != ds.config.digest():
        return False
    for split in SPLITS:
        info = manifest["splits"].get(split, {})
        if not ds.coco_json(split).is_file() or _sha256(ds.coco_json(split)) != info.get("coco_sha256"):
            return False
        n = info.get("images")
        if sum(1 for _ in ds.images(split).iterdir()) != n or sum(1 for _ in ds.labels(split).iterdir()) != n:
            return False
    return ds.yaml.is_file()


def default_root() -> Path:
    return fm.data_root() / "fmnist-det"


def build_fmnist_det(config: FMNISTDetConfig | str = "proxy", root: str | os.PathLike | None = None,
                     force: bool = False, **overrides) -> FMNISTDet:
    """Generate FMNIST-Det under `root` (default `$QAT_DATA/fmnist-det`), or reuse a valid cached copy."""
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown FMNIST-Det preset {config!r}; choose from: {', '.join(PRESETS)}")
        config = PRESETS[config]
    unknown = set(overrides) - {f.name for f in dataclasses.fields(FMNISTDetConfig)}
    if unknown:
        raise ValueError(f"unknown FMNIST-Det setting(s): {', '.join(sorted(unknown))}")
    cfg = dataclasses.replace(config, **overrides)
    cfg.validate()
    parent = Path(root) if root is not None else default_root()
    ds = FMNISTDet(parent.resolve() / cfg.dirname(), cfg)
    if not force and _is_valid(ds):
        return ds
    parent.mkdir(parents=True, exist_ok=True)
    # Written into a temporary directory and renamed into place: a crash never leaves a set that looks valid.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    try:
        counts = _write(cfg, tmp)
        (tmp / "data.yaml").write_text(_yaml_text(ds.root))
        manifest = {"generator_version": GENERATOR_VERSION, "config": asdict(cfg), "hash": cfg.digest(),
                    "splits": {s: {**counts[s], "coco_sha256": _sha256(tmp / "annotations" / f"instances_{s}.json")}
                               for s in SPLITS}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if not force and _is_valid(ds):  # another process (a parallel run) generated the same set meanwhile:
            return ds                    # keep its copy, which that process may already be reading
        if ds.root.exists():
            shutil.rmtree(ds.root)
        try:
            tmp.rename(ds.root)
        except OSError:  # lost the race between the check and the rename; the winner's copy is identical
            if not _is_valid(ds):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ds
