"""Detection: FMNIST-Det proxy runs and COCO runs of every paper detector under every QAT recipe.

- `coco_eval.coco_map`: the one evaluator (pycocotools mAP@[.5:.95], mAP@.5) for every detector.
- `ultralytics_qat.QATDetectionTrainer`: Ultralytics' DetectionTrainer with the shared qat prologue,
  hooks and post steps (YOLOv8-n/s/m, YOLOv9-t/s).
- `torch_detectors` + `torch_train.TorchDetectionTrainer`: SSD-MobileNetV2 and YOLOX-Nano/Tiny through the
  classification training loop with a detection task (COCO-format batches from qat/data/detection.py).
- `train.train_detector`: the Ultralytics detectors' glue to the run lifecycle (qat/run/lifecycle.py);
  `python -m qat.detection` is `python -m qat.run` with yolov8n as the default model.
"""
import os as _os
from pathlib import Path as _Path

from ..config import REPO as _REPO

# Ultralytics writes its settings file at import, under ~/.config/Ultralytics unless YOLO_CONFIG_DIR says
# otherwise, and may try to download or pip-install things: give it what scripts/setup.sh exports, for callers
# that did not source it (every import of ultralytics goes through this package).
_os.environ.setdefault("YOLO_CONFIG_DIR", str(_Path(_os.environ.get("QAT_STATE", _REPO / ".state")) / "ultralytics"))
_os.environ.setdefault("YOLO_OFFLINE", "1")
_os.environ.setdefault("YOLO_AUTOINSTALL", "false")

