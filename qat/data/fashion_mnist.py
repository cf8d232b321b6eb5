"""Fashion-MNIST from its IDX files, and the fixed splits every proxy run and FMNIST-Det share.

Where the files come from (first hit wins): `--data DIR`, `$QAT_DATA/fashion-mnist` (torchvision's
`FashionMNIST/raw` layout or the bare files), the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist).

Splits (independent of the run seed, so every run and every seed sees the same images):
- calibration: 5 000 training images, a fixed random slice, never trained on;
- train: the other 55 000 training images;
- test: the official 10 000 test images.
"""
from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CALIB_SIZE = 5000
SPLIT_SEED = 20240229        # fixes which training images form the calibration slice
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def data_root() -> Path:
    """`$QAT_DATA`, default `data/` in the repository: where downloaded and generated data sets live."""
    return Path(os.environ.get("QAT_DATA", Path(__file__).resolve().parents[2] / "data"))


def _has_files(d: Path) -> bool:
    return all((d / name).is_file() or (d / (name + ".gz")).is_file() for pair in FILES.values() for name in pair)


def find_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The directory holding the four IDX files; a clear FileNotFoundError when there is none."""
    if data_dir is not None:
        candidates = [Path(data_dir), Path(data_dir) / "FashionMNIST" / "raw"]
    else:
        base = data_root() / "fashion-mnist"
        candidates = [base / "FashionMNIST" / "raw", base, DEBIAN_DIR]
    for d in candidates:
        if _has_files(d):
            return d
    where = ", ".join(str(d) for d in candidates)
    raise FileNotFoundError(f"Fashion-MNIST not found in {where} (need train/t10k images and labels IDX files): "
                            f"run `bash scripts/setup.sh` or pass --data DIR")


def _read_idx(path: Path) -> np.ndarray:
    gz = path.with_name(path.name + ".gz")
    raw = gzip.open(gz, "rb").read() if gz.is_file() else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: corrupt IDX file ({data.size} values, header says {dims})")
    return data.reshape(dims)


@lru_cache(maxsize=4)
def load_split(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the official 'train' or 'test' file pair."""
    d = find_dir(data_dir)
    images, labels = (_read_idx(d / name) for name in FILES[split])
    return images, labels.astype(np.int64)


def calibration_indices() -> np.ndarray:
    """Indices (into the official training set) of the fixed 5 000-image calibration slice."""
    return np.sort(np.random.default_rng(SPLIT_SEED).permutation(60000)[:CALIB_SIZE])


def train_indices() -> np.ndarray:
    """The 55 000 training images outside the calibration slice, in file order."""
    mask = np.ones(60000, dtype=bool)
    mask[calibration_indices()] = False
    return np.flatnonzero(mask)
