"""Batches for classification: Fashion-MNIST at 32×32 (proxy presets) and an ImageNet ImageFolder (paper).

Both return (train, calibration, test) objects with `epoch(e)` → iterator of (images, labels) and
`len()` = batches per epoch. A batch size is the global batch: under torchrun each rank gets its share
of every batch, so a 2-process run sees exactly the batches of a 1-process run. The order of epoch `e`
depends only on (seed, e), so a resumed run continues with the batches it would have seen.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import fashion_mnist as fm

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530       # Fashion-MNIST training-set pixel statistics
PAD = 2                                        # 28 → 32 px: zero border (the models' input size)
SHIFT = 2                                      # training augmentation: random shift of up to ±2 px


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class FashionMNISTBatches:
    """In-memory batches of 32×32 one-channel images; training batches shuffled and augmented
    (random ±2 px shift and horizontal flip), evaluation batches in order."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, train: bool,
                 shard: bool = True):
        self.images = torch.from_numpy(np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD))))  # uint8 [N, 32, 32]
        self.labels = torch.from_numpy(labels)
        self.batch_size, self.seed, self.train = batch_size, seed, train
        self.rank, self.world = _rank_world() if shard else (0, 1)
        if train and batch_size % self.world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {self.world} processes")

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def epoch(self, e: int):
        n = len(self.labels)
        rng = np.random.default_rng([self.seed, e])
        order = rng.permutation(n) if self.train else np.arange(n)
        if self.train:
            shifts = rng.integers(-SHIFT, SHIFT + 1, size=(n, 2))
            flips = rng.random(n) < 0.5
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            mine = np.array_split(np.arange(len(idx)), self.world)[self.rank]  # this rank's share
            pos = idx[mine]
            x = self.images[pos]
            if self.train:
                x = _shift_flip(x, shifts[b * self.batch_size + mine], flips[b * self.batch_size + mine])
            x = (x.float().div_(255.0).sub_(FMNIST_MEAN).div_(FMNIST_STD)).unsqueeze(1)
            yield x, self.labels[pos]


def _shift_flip(x: torch.Tensor, shifts: np.ndarray, flips: np.ndarray) -> torch.Tensor:
    """Per-image shift by (dy, dx) with zero fill, then a horizontal flip where `flips`: one gather."""
    b, h, w = x.shape
    padded = torch.nn.functional.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT))
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    dy, dx = torch.from_numpy(shifts[:, 0]), torch.from_numpy(shifts[:, 1])
    rows = SHIFT + dy[:, None] + ar_h[None]                           # [b, h]
    cols_src = torch.where(torch.from_numpy(flips)[:, None], w - 1 - ar_w[None], ar_w[None])
    cols = SHIFT + dx[:, None] + cols_src                             # [b, w]
    return padded[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def fashion_mnist_data(batch_size: int, train_subset: int | None, test_subset: int | None, seed: int,
                       data_dir: str | None = None, calib_split: str = "train"):
    """(train, calibration, test) batches. `train_subset` takes a fixed subset of the 55 000 training
    images (the same for every seed); calibration is the 5 000-image held-out slice ('train') or the
    test set ('val', the paper's choice)."""
    train_x, train_y = fm.load_split("train", data_dir)
    test_x, test_y = fm.load_split("test", data_dir)
    train_idx = fm.train_indices()
    if train_subset is not None:
        if not 0 < train_subset <= len(train_idx):
            raise ValueError(f"train subset must be in 1..{len(train_idx)}, got {train_subset}")
        train_idx = np.sort(np.random.default_rng(fm.SPLIT_SEED + 1).permutation(train_idx)[:train_subset])
    n_test = len(test_y) if test_subset is None else min(test_subset, len(test_y))
    if calib_split == "train":
        calib_idx = fm.calibration_indices()
        calib_x, calib_y = train_x[calib_idx], train_y[calib_idx]
    else:
        calib_x, calib_y = test_x, test_y
    train = FashionMNISTBatches(train_x[train_idx], train_y[train_idx], batch_size, seed, train=True)
    # Calibration batches are shuffled with a fixed seed and not sharded: every rank initialises the same steps.
    perm = np.random.default_rng(fm.SPLIT_SEED + 2).permutation(len(calib_y))
    calib = FashionMNISTBatches(calib_x[perm], calib_y[perm], batch_size, seed, train=False, shard=False)
    test = FashionMNISTBatches(test_x[:n_test], test_y[:n_test], batch_size, seed, train=False)
    return train, calib, test


# ---------------------------------------------------------------------------------------- ImageNet
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_CALIB = 4096          # held-out training images for calibration (--calib-split train)


class LoaderBatches:
    """A DataLoader behind the `epoch(e)` / `len()` interface: training shuffles through a DistributedSampler;
    evaluation reads every world-th image in order, unpadded (DistributedSampler would repeat images to even
    out the shards, and the summed counts would then include duplicates)."""

    def __init__(self, dataset, batch_size: int, seed: int, train: bool, workers: int, shard: bool = True):
        from torch.utils.data import DataLoader, DistributedSampler, Subset
        rank, world = _rank_world() if shard else (0, 1)
        if train and batch_size % world:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world} processes")
        if train:
            self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                              drop_last=True)
        else:
            self.sampler = None
            dataset = Subset(dataset, range(rank, len(dataset), world)) if world > 1 else dataset
        self.loader = DataLoader(dataset, batch_size=max(1, batch_size // world), sampler=self.sampler,
                                 num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=train,
                                 persistent_workers=False)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, e: int):
        if self.sampler is not None:
            self.sampler.set_epoch(e)
        return iter(self.loader)


def imagenet_data(root: str, batch_size: int, seed: int, calib_split: str = "train", workers: int = 8,
                  train_subset: int | None = None):
    """ImageNet ImageFolder (root/train, root/val) with the standard 224 px transforms."""
    from torch.utils.data import Subset
    from torchvision import datasets, transforms
    root_path = Path(root)
    if not ((root_path / "train").is_dir() and (root_path / "val").is_dir()):
        raise ValueError(f"ImageNet ImageFolder not found at {root}: expected {root}/train/<class>/*.JPEG and "
                         f"{root}/val/<class>/*.JPEG")
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    eval_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize])
    try:
        train_set = datasets.ImageFolder(str(root_path / "train"), train_tf)
        train_eval = datasets.ImageFolder(str(root_path / "train"), eval_tf)
        val_set = datasets.ImageFolder(str(root_path / "val"), eval_tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise ValueError(f"ImageNet ImageFolder at {root} is unreadable: {e}") from None
    if train_set.classes != val_set.classes:
        raise ValueError(f"ImageNet train/ and val/ under {root} have different class folders")
    perm = np.random.default_rng(fm.SPLIT_SEED).permutation(len(train_set))
    n_calib = min(IMAGENET_CALIB, len(train_set) // 10) if calib_split == "train" else 0
    train_idx = np.sort(perm[n_calib:])
    if train_subset is not None:
        train_idx = np.sort(np.random.default_rng(fm.SPLIT_SEED + 1).permutation(train_idx)[:train_subset])
    if calib_split == "train" and n_calib > 0:
        calib_set = Subset(train_eval, perm[:n_calib].tolist())
    else:
        calib_set = Subset(val_set, np.random.default_rng(fm.SPLIT_SEED + 2).permutation(len(val_set)).tolist())
    train = LoaderBatches(Subset(train_set, train_idx.tolist()), batch_size, seed, True, workers)
    calib = LoaderBatches(calib_set, batch_size, seed, False, workers, shard=False)
    test = LoaderBatches(val_set, batch_size, seed, False, workers)
    return train, calib, test
