"""Presets (smoke / proxy / proxy-long / proxy-gpu / paper): one table of budgets and data per task, in one key
vocabulary (`clip_norm`: the gradient-norm clipping of qat.loop.qat_step, None = none; Ultralytics' trainer
clips at 10, its own default, so its detectors keep it; `step_update_bound`: the bound b on one optimizer update of a
step size, qat/step_bound.py, None = none). A preset changes only budgets and data; every preset runs the same code (DESIGN.md). QAT keeps the
paper's phase proportions: 80% ScaleGrad (τ), 20% EAD, then AFW ≈ 10% of the QAT epochs.

`RunConfig.presets` (qat/config.py) is its model's task's table: classifiers (Fashion-MNIST proxies of ImageNet),
SSD / YOLOX through the classification loop, and the Ultralytics detectors through Ultralytics' loop.
"""
from __future__ import annotations

CLASSIFICATION: dict[str, dict] = {
    # Seconds on a CPU: proves every path runs (tests, CI).
    "smoke": dict(clip_norm=None, step_update_bound=None, val_every_epoch=True, dataset="fashion-mnist", model_size="proxy", batch_size=32, train_subset=256, test_subset=256,
                  fp_epochs=2, fp_train_subset=2048, fp_lr=0.05, qat_epochs=5, qat_lr=0.01, calib_batches=2, afw_epochs=0.5,
                  qc_epochs=0.5, adaround_iterations=20, step_only_epochs=0.5, lr_step_fraction=0.5, bias_correction_batches=4),
    # Fashion-MNIST sized around the phenomenon (docs/PROXY_STUDY.md): a converged FP model (cached, 4 epochs
    # of the 55 000 training images), QAT 1 000 iterations (10 epochs of 12 800 images) with StepLR ×0.1 at 70 %,
    # so the EAD phase (τ = epoch 8) runs at lr 1e-3; AFW 1 epoch (10 % of QAT, as the paper); bias correction on
    # 2 batches of 128, accuracy on 5 000 test images. LSQ MobileNetV2 seed 0: W4A4 −3.3, W3A3 −7.5 from FP.
    "proxy": dict(clip_norm=None, step_update_bound=None, val_every_epoch=False, dataset="fashion-mnist", model_size="proxy", batch_size=128, train_subset=12800, test_subset=5000,
                  fp_epochs=4, fp_train_subset=None, fp_lr=0.05, qat_epochs=10, qat_lr=0.01, calib_batches=16,
                  afw_epochs=1, qc_epochs=1, adaround_iterations=100, step_only_epochs=1, lr_step_fraction=0.7,
                  bias_correction_batches=2),
    # The budgets of the first results (removed; git history, tables/results/README.md): 390 QAT iterations, the
    # full test set; hours per table on a 2-core CPU.
    "proxy-long": dict(clip_norm=None, step_update_bound=None, val_every_epoch=False, dataset="fashion-mnist", model_size="proxy", batch_size=128, train_subset=10000, test_subset=None,
                  fp_epochs=4, fp_train_subset=None, fp_lr=0.05, qat_epochs=5, qat_lr=0.01, calib_batches=32,
                  afw_epochs=0.5, qc_epochs=1, adaround_iterations=300, step_only_epochs=1, lr_step_fraction=0.4,
                  bias_correction_batches=4),
    # Same as proxy with the bigger budgets one GPU affords.
    "proxy-gpu": dict(clip_norm=None, step_update_bound=None, val_every_epoch=True, dataset="fashion-mnist", model_size="proxy", batch_size=128, train_subset=None, test_subset=None,
                      fp_epochs=20, fp_train_subset=None, fp_lr=0.05, qat_epochs=20, qat_lr=0.01, calib_batches=32,
                      afw_epochs=2, qc_epochs=1, adaround_iterations=2000, step_only_epochs=2, lr_step_fraction=0.4,
                      bias_correction_batches=4),
    # The paper (§V): ImageNet, SGD lr 1e-3, momentum 0.9, wd 1e-5, batch 128, StepLR,
    # 80 epochs ScaleGrad + 20 EAD + 10 AFW; FP weights from a local checkpoint.
    "paper": dict(clip_norm=None, step_update_bound=None, val_every_epoch=True, dataset="imagenet", model_size="paper", batch_size=128, train_subset=None, test_subset=None,
                  fp_epochs=None, fp_lr=None, qat_epochs=100, qat_lr=1e-3, calib_batches=32, afw_epochs=10,
                  qc_epochs=1, adaround_iterations=10000, step_only_epochs=1, lr_step_fraction=0.4,
                  bias_correction_batches=4),
}

# A QAT learning rate of its own for a model that does not train at its preset's (tables/results/README.md,
# DEVIATIONS 24): BN-folded MobileNetV1 (no residuals) diverges at qat_lr 1e-2 even at W8A8 and ends at chance
# with 1e-3; with 1e-4 it keeps most of its calibrated accuracy. Not a preset key (that would change every
# run's recorded preset values, so no earlier run would match for reuse): RunConfig records it as the run's `lr`.
MODEL_QAT_LR: dict[tuple[str, str], float] = {(preset, "mobilenetv1"): 1e-4
                                              for preset in ("proxy", "proxy-long", "proxy-gpu")}

# SSD-MobileNetV2 and YOLOX (qat/detection/torch_train.py) on FMNIST-Det / COCO.
_COMMON = dict(clip_norm=None, step_update_bound=None, val_every_epoch=False, model_size=None, train_subset=None, test_subset=None, fp_train_subset=None,
               lr_step_fraction=0.4, bias_correction_batches=4)
TORCH_DETECTION: dict[str, dict] = {
    # Seconds on a CPU: proves every path runs (tests, CI).
    "smoke": dict(_COMMON, val_every_epoch=True, dataset="fmnist-det", fmnist_det="smoke", imgsz=64, batch_size=8,
                  fp_epochs=1, fp_lr=0.01, qat_epochs=2, qat_lr=1e-3, calib_batches=2, afw_epochs=0.5, qc_epochs=0.5,
                  adaround_iterations=10, step_only_epochs=0.5, lr_step_fraction=0.5),
    # The Ultralytics detectors' 30-minute budget: FMNIST-Det "small" (96 px), FP 3 epochs, QAT 130 iterations
    # (5 epochs of 416 images), bias correction on 2 batches.
    "proxy": dict(_COMMON, dataset="fmnist-det", fmnist_det="small", imgsz=96, batch_size=16, fp_epochs=3,
                  fp_lr=0.01, qat_epochs=5, train_subset=416, qat_lr=1e-3, calib_batches=8, afw_epochs=0.5,
                  qc_epochs=1, adaround_iterations=100, step_only_epochs=1, bias_correction_batches=2),
    # FMNIST-Det proxy (4000 train / 500 val images, 128 px), the Ultralytics detectors' proxy-long budget.
    "proxy-long": dict(_COMMON, dataset="fmnist-det", fmnist_det="proxy", imgsz=128, batch_size=16, fp_epochs=4,
                  fp_lr=0.01, qat_epochs=5, qat_lr=1e-3, calib_batches=16, afw_epochs=0.5, qc_epochs=1,
                  adaround_iterations=300, step_only_epochs=1),
    "proxy-gpu": dict(_COMMON, val_every_epoch=True, dataset="fmnist-det", fmnist_det="proxy", imgsz=128,
                      batch_size=64, fp_epochs=100, fp_lr=0.02, qat_epochs=30, qat_lr=1e-3, calib_batches=32,
                      afw_epochs=3, qc_epochs=1, adaround_iterations=2000, step_only_epochs=2),
    # The paper (§V): COCO 2017, SGD lr 1e-3, 80 ScaleGrad + 20 EAD epochs, 10 AFW; FP weights from a checkpoint.
    "paper": dict(_COMMON, val_every_epoch=True, dataset="coco", fmnist_det=None, imgsz=640, batch_size=64,
                  fp_epochs=None, fp_lr=None, qat_epochs=100, qat_lr=1e-3, calib_batches=32, afw_epochs=10,
                  qc_epochs=1, adaround_iterations=10000, step_only_epochs=1),
}

# YOLOv8 / YOLOv9 (qat/detection/ultralytics_qat.py). The data set of the FMNIST-Det presets is the FMNIST-Det
# preset of the same name.
ULTRALYTICS: dict[str, dict] = {
    # Seconds to minutes on a CPU: proves every path runs (tests, CI).
    "smoke": dict(clip_norm=10.0, step_update_bound=None, dataset="fmnist-det", fmnist_det="smoke", imgsz=64, batch_size=8, fp_epochs=1, fp_lr=0.01, fp_warmup_epochs=0,
                  qat_epochs=2, qat_lr=1e-3, calib_batches=2, afw_epochs=0.5, qc_epochs=0.5,
                  adaround_iterations=10, step_only_epochs=0.5, close_mosaic=0, fraction=1.0, val_every_epoch=True,
                  bias_correction_batches=4),
    # Sized around convergence (docs/FMNIST_DET.md, "The proxy preset"): FMNIST-Det "small" (3000 train / 250
    # val, 96 px), FP 10 epochs (Ultralytics' optimizer=auto: AdamW at its own lr, fp_lr unused), QAT 752
    # iterations (4 epochs of 188) at lr 1e-2 with Ultralytics' linear decay (EAD's epoch 4 at 2.6e-3), bias
    # correction on 2 batches, mAP after the last epoch only; each optimizer update keeps a step size within a factor
    # 1.1 (DEVIATIONS 2b: at lr 1e-2 one update could cut a step by 86 % and trap it). YOLOv8-n LSQ W4A4 keeps 93 %
    # of FP mAP (three seeds).
    "proxy": dict(clip_norm=10.0, step_update_bound=0.1, dataset="fmnist-det", fmnist_det="small", imgsz=96, batch_size=16, fp_epochs=10, fp_lr=0.01, fp_warmup_epochs=1,
                  qat_epochs=4, fraction=1.0, val_every_epoch=False, qat_lr=1e-2, calib_batches=8, afw_epochs=0.5,
                  qc_epochs=1, adaround_iterations=100, step_only_epochs=1, close_mosaic=1, bias_correction_batches=2),
    # FMNIST-Det proxy (4000 train / 500 val images, 128 px): the first committed results; hours per table.
    "proxy-long": dict(clip_norm=10.0, step_update_bound=None, dataset="fmnist-det", fmnist_det="proxy", imgsz=128, batch_size=16, fp_epochs=4, fp_lr=0.01, fp_warmup_epochs=1,
                       qat_epochs=5, fraction=1.0, val_every_epoch=True, qat_lr=1e-3, calib_batches=16, afw_epochs=0.5,
                       qc_epochs=1, adaround_iterations=300, step_only_epochs=1, close_mosaic=2, bias_correction_batches=4),
    # The same data with the budgets one GPU affords.
    "proxy-gpu": dict(clip_norm=10.0, step_update_bound=None, dataset="fmnist-det", fmnist_det="proxy", imgsz=128, batch_size=64, fp_epochs=100, fp_lr=0.01, fp_warmup_epochs=3,
                      qat_epochs=30, fraction=1.0, val_every_epoch=True, qat_lr=1e-3, calib_batches=32, afw_epochs=3, qc_epochs=1,
                      adaround_iterations=2000, step_only_epochs=2, close_mosaic=5, bias_correction_batches=4),
    # The paper (§V): COCO 2017, SGD lr 1e-3 momentum 0.9 wd 1e-5, 80 ScaleGrad + 20 EAD epochs + 10 AFW;
    # FP weights from a local checkpoint (ours or an Ultralytics .pt).
    "paper": dict(clip_norm=10.0, step_update_bound=None, dataset="coco", fmnist_det=None, imgsz=640, batch_size=64, fp_epochs=None, fp_lr=None, fp_warmup_epochs=3,
                  qat_epochs=100, fraction=1.0, val_every_epoch=True, qat_lr=1e-3, calib_batches=32, afw_epochs=10, qc_epochs=1,
                  adaround_iterations=10000, step_only_epochs=1, close_mosaic=10, bias_correction_batches=4),
}

PRESETS: dict[str, dict[str, dict]] = {"classification": CLASSIFICATION, "detection": TORCH_DETECTION,
                                       "ultralytics": ULTRALYTICS}
PRESET_NAMES = tuple(CLASSIFICATION)  # every task has these five
assert all(tuple(table) == PRESET_NAMES for table in PRESETS.values())
