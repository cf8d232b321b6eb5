"""SSD-MobileNetV2 (torchvision's SSD parts) and YOLOX-Nano/Tiny (the `yolox` package), as plain modules.

Both follow one contract, so the classification training loop, the prologue and every recipe treat them
like a classifier:
- `forward(x)` → raw head outputs (BN folding, calibration and bias correction run this);
- `forward(x, targets)` → the detector's training loss (a scalar; through DDP like any forward);
- `detect(x)` → per image {"boxes" xyxy in input pixels, "scores", "labels" in 0..C−1} after NMS;
- `high_precision_layers()` → the first conv and the head's output convs (kept at 8 bits by default).

Inputs are RGB in [0, 1], letterboxed to a square (qat/data/detection.py).
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from functools import partial

import torch
from torch import nn

TORCH_DETECTORS = ("ssd_mobilenetv2", "yolox_nano", "yolox_tiny")
# yolox's SimOTA assignment calls the deprecated torch.cuda.amp.autocast on every training step
warnings.filterwarnings("ignore", message=r".*torch\.cuda\.amp\.autocast.*", category=FutureWarning)


# ------------------------------------------------------------------------------------ SSD-MobileNetV2
class MobileNetV2Features(nn.Module):
    """MobileNetV2's feature stages cut at the given block indices, then SSDLite extra blocks (stride 2 each)."""

    def __init__(self, cuts: tuple[int, ...], extra_channels: tuple[int, ...], norm_layer):
        super().__init__()
        from torchvision.models import mobilenet_v2
        from torchvision.models.detection.ssdlite import _extra_block

        features = mobilenet_v2(weights=None, norm_layer=norm_layer).features
        bounds = (0, *cuts, len(features))
        self.stages = nn.ModuleList(features[a:b] for a, b in zip(bounds[:-1], bounds[1:]))
        channels = [self._out_channels(stage) for stage in self.stages]
        extras = []
        for c in extra_channels:
            extras.append(_extra_block(channels[-1], c, norm_layer))
            channels.append(c)
        self.extras = nn.ModuleList(extras)
        self.out_channels = channels

    @staticmethod
    def _out_channels(stage: nn.Sequential) -> int:
        return [m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict:
        out = []
        for stage in (*self.stages, *self.extras):
            x = stage(x)
            out.append(x)
        return OrderedDict((str(i), f) for i, f in enumerate(out))


def _ssd_class():
    from torchvision.models.detection.ssd import SSD

    class SSDMobileNetV2(SSD):
        """SSDLite head (depthwise-separable) on MobileNetV2 features; torchvision's matcher, box coder,
        loss (smooth-L1 + cross-entropy with 3:1 hard negatives) and post-processing. Its resize/normalise
        transform is bypassed: the data pipeline letterboxes, so boxes never need rescaling here."""

        def __init__(self, num_classes: int, imgsz: int):
            from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
            from torchvision.models.detection.ssdlite import SSDLiteHead

            norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
            if imgsz <= 160:  # proxy (128 px): strides 8, 16, 32, 64, 128 → grids 16…1
                backbone = MobileNetV2Features((7, 14), (512, 256), norm_layer)
            else:  # SSDLite320's layout: strides 16, 32, then four extra blocks
                backbone = MobileNetV2Features((14,), (512, 256, 256, 128), norm_layer)
            levels = len(backbone.out_channels)
            anchors = DefaultBoxGenerator([[2, 3]] * levels, min_ratio=0.1 if imgsz <= 160 else 0.2, max_ratio=0.95)
            head = SSDLiteHead(backbone.out_channels, anchors.num_anchors_per_location(), num_classes + 1, norm_layer)
            super().__init__(backbone, anchors, (imgsz, imgsz), num_classes + 1, image_mean=[0.0] * 3,
                             image_std=[1.0] * 3, head=head, score_thresh=0.001, nms_thresh=0.5,
                             detections_per_img=100, topk_candidates=400)

        def _head(self, x):
            features = list(self.backbone(x).values())
            return features, self.head(features)

        def _anchors(self, x, features):
            from torchvision.models.detection.image_list import ImageList
            return self.anchor_generator(ImageList(x, [tuple(x.shape[-2:])] * len(x)), features)

        def forward(self, x, targets=None):
            from torchvision.ops import boxes as box_ops
            features, out = self._head(x)
            if targets is None:
                return out
            anchors = self._anchors(x, features)
            targets = [{"boxes": t["boxes"], "labels": t["labels"] + 1} for t in targets]  # 0 = background
            unmatched = lambda a: torch.full((a.size(0),), -1, dtype=torch.int64, device=a.device)  # noqa: E731
            matched = [self.proposal_matcher(box_ops.box_iou(t["boxes"], a)) if t["boxes"].numel() else unmatched(a)
                       for t, a in zip(targets, anchors)]
            losses = self.compute_loss(targets, out, anchors, matched)
            return losses["bbox_regression"] + losses["classification"]

        @torch.no_grad()
        def detect(self, x):
            features, out = self._head(x)
            dets = self.postprocess_detections(out, self._anchors(x, features), [tuple(x.shape[-2:])] * len(x))
            return [{"boxes": d["boxes"], "scores": d["scores"], "labels": d["labels"] - 1} for d in dets]

        def high_precision_layers(self) -> list[str]:
            first = next(n for n, m in self.named_modules() if isinstance(m, nn.Conv2d))
            outputs = [f"head.{branch}.module_list.{i}.1" for branch in ("classification_head", "regression_head")
                       for i in range(len(self.backbone.out_channels))]
            return [first] + outputs

    return SSDMobileNetV2


# --------------------------------------------------------------------------------------------- YOLOX
YOLOX_VARIANTS = {"yolox_nano": dict(depth=0.33, width=0.25, depthwise=True),
                  "yolox_tiny": dict(depth=0.33, width=0.375, depthwise=False)}


class YOLOXDetector(nn.Module):
    """YOLOX (PAFPN + decoupled head, SimOTA loss) from the `yolox` package.

    Inputs stay in [0, 1] (Megvii feeds 0–255): once BN is folded into the stem conv, a 0–255 input makes the
    stem's weight gradient ~255× its weights' scale and the first QAT step destroys the stem."""

    def __init__(self, variant: str, num_classes: int):
        super().__init__()
        from yolox.models import YoloPafpn, YoloxHead, YoloxModule

        v = YOLOX_VARIANTS[variant]
        self.num_classes = num_classes
        self.net = YoloxModule(YoloPafpn(v["depth"], v["width"], depthwise=v["depthwise"]),
                               YoloxHead(num_classes, v["width"], depthwise=v["depthwise"]))
        for m in self.net.modules():  # YOLOX's own initialisation (yolox/exp/yolox_base.py)
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 1e-3, 0.03
        self.net.head.initialize_biases(1e-2)

    def forward(self, x, targets=None):
        if targets is None:
            return self.net(x)
        head = self.net.head
        was_training = head.training
        head.training = True  # the loss branch of the head, also for a post step that runs the model in eval
        try:
            return self.net(x, self._labels(targets, x))["total_loss"]
        finally:
            head.training = was_training

    @staticmethod
    def _labels(targets, x) -> torch.Tensor:
        """YOLOX's target tensor [B, max objects, 5] = (class, cx, cy, w, h) in pixels, zero-padded."""
        n = max(1, max(len(t["labels"]) for t in targets))
        out = torch.zeros(len(targets), n, 5, device=x.device)
        for i, t in enumerate(targets):
            b = t["boxes"]
            if len(b):
                out[i, :len(b), 0] = t["labels"].float()
                out[i, :len(b), 1:3] = (b[:, :2] + b[:, 2:]) / 2
                out[i, :len(b), 3:5] = b[:, 2:] - b[:, :2]
        return out

    @torch.no_grad()
    def detect(self, x, conf: float = 0.001, nms: float = 0.65):
        from yolox.utils import postprocess
        was_training = self.training
        self.eval()
        try:
            preds = postprocess(self(x), self.num_classes, conf_thre=conf, nms_thre=nms)
        finally:
            self.train(was_training)
        out = []
        for p in preds:
            if p is None:
                p = x.new_zeros(0, 7)
            out.append({"boxes": p[:, :4], "scores": p[:, 4] * p[:, 5], "labels": p[:, 6].long()})
        return out

    def high_precision_layers(self) -> list[str]:
        first = next(n for n, m in self.named_modules() if isinstance(m, nn.Conv2d))
        head = [f"net.head.{branch}.{i}" for branch in ("cls_preds", "reg_preds", "obj_preds")
                for i in range(len(self.net.head.cls_preds))]
        return [first] + head


def build_torch_detector(name: str, num_classes: int, imgsz: int) -> nn.Module:
    if name == "ssd_mobilenetv2":
        return _ssd_class()(num_classes, imgsz)
    if name in YOLOX_VARIANTS:
        return YOLOXDetector(name, num_classes)
    raise ValueError(f"unknown detector {name!r}; choose from: {', '.join(TORCH_DETECTORS)}")
