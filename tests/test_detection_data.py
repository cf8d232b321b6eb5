"""FMNIST-Det: deterministic, valid COCO JSON and YOLO labels that agree, limited overlap, cached."""
import filecmp
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import qat.data.fmnist_det as fmd
from qat.data.fmnist_det import FMNISTDetConfig, build_fmnist_det, render_image, tight_crop

TINY = FMNISTDetConfig(train_size=8, val_size=6, canvas=96, min_size=10, max_size=48, seed=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_fmnist_det(TINY, tmp_path_factory.mktemp("fmnist_det_a"))


def test_same_config_gives_identical_files(tiny, tmp_path):
    other = build_fmnist_det(TINY, tmp_path)
    for sub in ("images/train", "images/val", "labels/train", "labels/val", "annotations"):
        a, b = tiny.root / sub, other.root / sub
        names = sorted(p.name for p in a.iterdir())
        assert names == sorted(p.name for p in b.iterdir()) and names
        match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
        assert not mismatch and not errors


def test_another_seed_gives_other_images(tiny, tmp_path):
    other = build_fmnist_det(TINY, tmp_path, seed=4)
    assert other.root.name != tiny.root.name
    assert (tiny.coco_json("train").read_bytes() != other.coco_json("train").read_bytes())


def test_rerun_reuses_the_cached_directory(tiny):
    stamp = tiny.coco_json("train").stat().st_mtime_ns
    again = build_fmnist_det(TINY, tiny.root.parent)
    assert again.root == tiny.root and tiny.coco_json("train").stat().st_mtime_ns == stamp
    manifest = json.loads((tiny.root / "manifest.json").read_text())
    assert manifest["config"]["train_size"] == 8 and manifest["hash"] == TINY.digest()


def test_a_set_generated_meanwhile_by_another_process_is_kept(tmp_path, monkeypatch):
    """Two parallel runs that both find no cached set: the one that finishes second must not delete the
    first one's copy (the first run may already be reading it)."""
    real_write, winner = fmd._write, []

    def write_after_another_process(cfg, tmp):
        if not winner:  # the other process generates the same set and renames it into place first
            winner.append(None)
            winner[0] = build_fmnist_det(TINY, tmp_path).coco_json("train").stat().st_ino
        return real_write(cfg, tmp)

    monkeypatch.setattr(fmd, "_write", write_after_another_process)
    ds = build_fmnist_det(TINY, tmp_path)
    assert ds.coco_json("train").stat().st_ino == winner[0]  # not replaced
    assert [p.name for p in tmp_path.iterdir()] == [ds.root.name]  # no temporary directory left


def test_coco_json_loads_with_pycocotools_and_matches_yolo_labels(tiny):
    from pycocotools.coco import COCO

    for split, n in (("train", TINY.train_size), ("val", TINY.val_size), ("calib", TINY.val_size)):
        coco = COCO(str(tiny.coco_json(split)))
        assert len(coco.getImgIds()) == n
        assert sorted(coco.getCatIds()) == list(range(1, 11))
        for img in coco.dataset["images"]:
            assert (img["width"], img["height"]) == (TINY.canvas, TINY.canvas)
            assert (tiny.images(split) / img["file_name"]).is_file()
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert 1 <= len(anns) <= TINY.max_objects
            lines = (tiny.labels(split) / (Path(img["file_name"]).stem + ".txt")).read_text().split("\n")
            rows = [list(map(float, line.split())) for line in lines if line]
            assert len(rows) == len(anns)
            for ann, (cls, cx, cy, w, h) in zip(anns, rows):
                x, y, bw, bh = ann["bbox"]
                assert ann["category_id"] == int(cls) + 1 and ann["iscrowd"] == 0 and ann["area"] == bw * bh
                s = TINY.canvas
                assert np.allclose([cx * s, cy * s, w * s, h * s], [x + bw / 2, y + bh / 2, bw, bh], atol=1e-3)
                assert 0 <= x and 0 <= y and x + bw <= s and y + bh <= s
                assert max(bw, bh) <= TINY.max_size


def test_data_yaml_is_absolute_and_has_no_download_key(tiny):
    spec = yaml.safe_load(tiny.yaml.read_text())
    assert Path(spec["path"]).is_absolute() and Path(spec["path"]) == tiny.root.resolve()
    assert spec["train"] == "images/train" and spec["val"] == "images/val"
    assert "download" not in spec and len(spec["names"]) == 10
    assert Path(spec["val_json"]).is_file() and Path(spec["calib_json"]).is_file()
    assert Path(spec["calib"]).is_absolute() and Path(spec["calib"]) == tiny.images("calib")


def test_calib_split_draws_items_from_the_held_out_calibration_slice(tiny):
    """calib's items come from Fashion-MNIST's calibration slice (never trained on), train's from the rest; adding
    calib left train and val as they were (their random streams and the set's digest are unchanged)."""
    from qat.data import fashion_mnist as fm
    train_items, _ = fmd._source("train")
    assert len(fmd._source("calib")[0]) == fm.CALIB_SIZE and len(train_items) == 60000 - fm.CALIB_SIZE
    assert fmd.SPLITS.index("train") == 0 and fmd.SPLITS.index("val") == 1  # the streams [seed, split, i] of train/val
    calib_items, calib_labels = fmd._source("calib")
    first = np.asarray(Image.open(tiny.images("calib") / "000001.png").convert("RGB"))
    rendered, _, _ = render_image(np.random.default_rng([TINY.seed, 2, 0]), calib_items, calib_labels, TINY)
    assert np.array_equal(first, rendered)


def test_overlap_between_objects_is_limited():
    items = np.zeros((3, 28, 28), np.uint8)
    items[:, 4:24, 6:22] = 200   # solid items: the pasted box is the placement rectangle
    labels = np.arange(3)
    cfg = FMNISTDetConfig(canvas=64, min_size=20, max_size=40, min_objects=6, max_objects=6, max_overlap=0.2)
    for i in range(20):
        _, boxes, classes = render_image(np.random.default_rng(i), items, labels, cfg)
        for a in range(len(boxes)):
            for b in range(a + 1, len(boxes)):
                (x1, y1, w1, h1), (x2, y2, w2, h2) = boxes[a], boxes[b]
                iw = max(0, min(x1 + w1, x2 + w2) - max(x1, x2))
                ih = max(0, min(y1 + h1, y2 + h2) - max(y1, y2))
                assert iw * ih <= 0.2 * min(w1 * h1, w2 * h2) + 1e-9


def test_tight_crop_removes_the_zero_border():
    im = np.zeros((28, 28), np.uint8)
    im[5:9, 10:20] = 7
    assert tight_crop(im).shape == (4, 10)


def test_bad_config_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        build_fmnist_det(TINY, tmp_path, min_size=80, max_size=40)
    with pytest.raises(ValueError):
        build_fmnist_det("no-such-preset", tmp_path)
