"""Detection: FMNIST-Det proxy runs and COCO runs of every paper detector under every QAT recipe.

- `coco_eval.coco_map`: the one evaluator (pycocotools mAP@[.5:.95], mAP@.5) for every detector.
- `ultralytics_qat.QATDetectionTrainer`: Ultralytics' DetectionTrainer with the shared qat prologue,
  hooks and post steps (YOLOv8-n/s/m, YOLOv9-t/s).
- `torch_detectors` + `torch_train.TorchDetectionTrainer`: SSD-MobileNetV2 and YOLOX-Nano/Tiny through the
  classification training loop with a detection task (COCO-format batches from qat/data/detection.py).
- `train.train_detector` / `python -m qat.detection`: runs by name with presets smoke/proxy/proxy-gpu/paper
  (SSD / YOLOX names are handed to `torch_train.main`).
"""
