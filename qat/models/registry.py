"""Classifier registry: every model of the paper's Tables II/III buildable by name at two sizes.

`proxy`: Fashion-MNIST (1×32×32, 10 classes), stems adapted to 32 px and widths chosen so that an FP
epoch fits in a few minutes of a 2-core CPU. `paper`: the standard ImageNet architecture (3×224×224,
1000 classes). Both are built with `pretrained=False`; the paper preset loads a local checkpoint.
"""
from __future__ import annotations

from typing import Callable

import timm
from torch import nn

SIZES = {"proxy": dict(num_classes=10, in_chans=1, image_size=32),
         "paper": dict(num_classes=1000, in_chans=3, image_size=224)}

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def wrap(fn):
        _BUILDERS[name] = fn
        return fn
    return wrap


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, size: str = "proxy", num_classes: int | None = None) -> nn.Module:
    """Build `name` at `size` ('proxy' or 'paper'); `num_classes` overrides the size's default."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from: {', '.join(model_names())}")
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from: {', '.join(SIZES)}")
    spec = dict(SIZES[size])
    if num_classes is not None:
        spec["num_classes"] = num_classes
    return _BUILDERS[name](size=size, num_classes=spec["num_classes"], in_chans=spec["in_chans"])


def input_shape(size: str) -> tuple[int, int, int]:
    s = SIZES[size]
    return (s["in_chans"], s["image_size"], s["image_size"])


@register("mobilenetv2")
def mobilenetv2(size: str, num_classes: int, in_chans: int) -> nn.Module:
    if size == "paper":
        return timm.create_model("mobilenetv2_100", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    # Proxy: width 0.5 and a stride-1 stem, so 32 px inputs end in a 2×2 feature map (not 1×1).
    model = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    model.conv_stem.stride = (1, 1)
    return model


@register("resnet18")
def resnet18(size: str, num_classes: int, in_chans: int) -> nn.Module:
    model = timm.create_model("resnet18", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    if size == "proxy":
        # Proxy: a 3×3 stem conv for 32 px inputs; stride 2 + max-pool kept (8×8 into layer1) for the CPU budget.
        model.conv1 = nn.Conv2d(in_chans, 64, 3, stride=2, padding=1, bias=False)
    return model
