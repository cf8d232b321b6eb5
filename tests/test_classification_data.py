"""Fashion-MNIST batches: fixed splits, deterministic epochs, rank shards that add up to the global batch."""
import numpy as np
import pytest
import torch

from qat.data import classification as cd
from qat.data import fashion_mnist as fm


def test_splits_are_fixed_and_disjoint():
    calib, train = fm.calibration_indices(), fm.train_indices()
    assert len(calib) == 5000 and len(train) == 55000
    assert not set(calib) & set(train)
    assert np.array_equal(calib, fm.calibration_indices())


def test_batches_are_32px_normalised_and_labelled():
    train, calib, test = cd.fashion_mnist_data(64, 512, 300, seed=0)
    x, y = next(iter(test.epoch(0)))
    assert x.shape == (64, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train) == 512 // 64 and len(test) == -(-300 // 64)
    # the zero border of the 28 px images is (0 - mean) / std
    assert torch.allclose(x[:, :, :2, :], torch.full_like(x[:, :, :2, :], -cd.FMNIST_MEAN / cd.FMNIST_STD))
    images, labels = fm.load_split("test")
    assert torch.equal(y, torch.from_numpy(labels[:64]))


def test_an_epoch_depends_only_on_seed_and_epoch():
    a, _, _ = cd.fashion_mnist_data(32, 256, 32, seed=3)
    b, _, _ = cd.fashion_mnist_data(32, 256, 32, seed=3)
    c, _, _ = cd.fashion_mnist_data(32, 256, 32, seed=4)
    xa, ya = next(iter(a.epoch(2)))
    xb, yb = next(iter(b.epoch(2)))
    xc, _ = next(iter(c.epoch(2)))
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and not torch.equal(xa, xc)
    assert not torch.equal(next(iter(a.epoch(1)))[0], xa)


def test_shift_and_flip_by_hand():
    x = torch.arange(16, dtype=torch.uint8).reshape(1, 4, 4)
    out = cd._shift_flip(x, np.array([[1, 0]]), np.array([False]))
    assert torch.equal(out[0, :3], x[0, 1:]) and torch.equal(out[0, 3], torch.zeros(4, dtype=torch.uint8))
    out = cd._shift_flip(x, np.array([[0, 0]]), np.array([True]))
    assert torch.equal(out[0], x[0].flip(1))


def test_rank_shards_make_up_the_global_batch(monkeypatch):
    full, _, _ = cd.fashion_mnist_data(32, 256, 32, seed=1)
    x_full, y_full = next(iter(full.epoch(0)))
    parts = []
    for rank in range(2):
        monkeypatch.setattr(cd, "_rank_world", lambda rank=rank: (rank, 2))
        shard, _, _ = cd.fashion_mnist_data(32, 256, 32, seed=1)
        parts.append(next(iter(shard.epoch(0))))
    assert torch.equal(torch.cat([p[0] for p in parts]), x_full)
    assert torch.equal(torch.cat([p[1] for p in parts]), y_full)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found"):
        fm.find_dir(tmp_path / "nothing")


def test_evaluation_shards_cover_every_image_once(monkeypatch):
    """Under DDP the summed evaluation counts must not include padding duplicates (10 images, 3 ranks)."""
    data = torch.utils.data.TensorDataset(torch.arange(10.0), torch.arange(10))
    seen = []
    for rank in range(3):
        monkeypatch.setattr(cd, "_rank_world", lambda rank=rank: (rank, 3))
        batches = cd.LoaderBatches(data, batch_size=6, seed=0, train=False, workers=0)
        seen += [int(y) for _, ys in batches.epoch(0) for y in ys]
    assert sorted(seen) == list(range(10))
