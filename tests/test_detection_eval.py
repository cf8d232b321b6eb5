"""The detection evaluator against hand-made cases whose COCO AP is known."""
import pytest

from qat.detection.coco_eval import coco_map

GT = {"images": [{"id": 1, "width": 200, "height": 200}, {"id": 2, "width": 200, "height": 200}],
      "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
      "annotations": [
          {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100], "area": 10000, "iscrowd": 0},
          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [120, 120, 50, 50], "area": 2500, "iscrowd": 0},
          {"id": 3, "image_id": 2, "category_id": 2, "bbox": [10, 20, 60, 40], "area": 2400, "iscrowd": 0}]}


def det(image_id, cat, bbox, score):
    return {"image_id": image_id, "category_id": cat, "bbox": bbox, "score": score}


def test_perfect_detections_give_ap_one():
    dets = [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in GT["annotations"]]
    res = coco_map(dets, GT)
    assert res["map"] == pytest.approx(1.0) and res["map50"] == pytest.approx(1.0)
    assert res["metric"] == pytest.approx(100.0)


def test_half_recall_with_a_false_positive_ranked_second():
    # One class, two GT boxes: a hit at rank 1 (P=1, R=.5), a miss-placed box at rank 2 (P=.5, R=.5), the
    # second GT never found. Interpolated precision is 1 for the 51 recall points 0, .01, ..., .5 and 0 for
    # the other 50 of COCO's 101, at every IoU threshold: AP = 51/101.
    gt = {**GT, "categories": GT["categories"][:1], "annotations": GT["annotations"][:2], "images": GT["images"][:1]}
    dets = [det(1, 1, [0, 0, 100, 100], 0.9), det(1, 1, [150, 0, 40, 40], 0.8)]
    res = coco_map(dets, gt)
    assert res["map"] == pytest.approx(51 / 101) and res["map50"] == pytest.approx(51 / 101)


def test_iou_072_counts_at_thresholds_up_to_070_only():
    # GT A matched by a box of IoU 0.72 (score .9), GT B matched exactly (score .8). Thresholds .50–.70
    # (5 of 10): both hits, AP 1. Thresholds .75–.95: the first-ranked box is a false positive, then a hit
    # at P=.5, R=.5: AP = .5·51/101. mAP = (5·1 + 5·.5·51/101)/10; mAP@.5 = 1.
    gt = {**GT, "categories": GT["categories"][:1], "annotations": GT["annotations"][:2], "images": GT["images"][:1]}
    dets = [det(1, 1, [0, 0, 100, 72], 0.9), det(1, 1, [120, 120, 50, 50], 0.8)]
    res = coco_map(dets, gt)
    assert res["map50"] == pytest.approx(1.0)
    assert res["map"] == pytest.approx((5 + 5 * 0.5 * 51 / 101) / 10)


def test_mean_over_classes_and_missing_images():
    # Class 1 perfect on image 1; class 2's only GT (image 2) gets no detection: mAP = (1 + 0) / 2.
    dets = [det(1, 1, [0, 0, 100, 100], 0.9), det(1, 1, [120, 120, 50, 50], 0.8)]
    res = coco_map(dets, GT)
    assert res["map"] == pytest.approx(0.5) and res["map50"] == pytest.approx(0.5)


def test_no_detections_give_zero_and_unknown_images_are_an_error(tmp_path):
    import json
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(GT))
    assert coco_map([], path)["map"] == 0.0
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_map([det(99, 1, [0, 0, 1, 1], 0.5)], path)
