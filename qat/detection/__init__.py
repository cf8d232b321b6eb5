"""Detection: FMNIST-Det proxy runs and COCO runs of Ultralytics detectors under every QAT recipe.

- `coco_eval.coco_map`: the one evaluator (pycocotools mAP@[.5:.95], mAP@.5) for every detector.
- `ultralytics_qat.QATDetectionTrainer`: Ultralytics' DetectionTrainer with the shared qat prologue,
  hooks and post steps (YOLOv8-n/s/m, YOLOv9-t/s).
- `train.train_detector` / `python -m qat.detection`: runs by name with presets smoke/proxy/proxy-gpu/paper.
"""
