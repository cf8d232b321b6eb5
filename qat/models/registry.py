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


# ---------------------------------------------------------------------------------------------------
# The other seven classifiers of the paper's Tables II/III. Each docstring names the real architecture
# (built unchanged at `paper` size) and what the 32 px `proxy` changes. The proxies' FP training-step
# costs (batch 128, 2 CPU threads) are measured by `python -m qat.models.bench`.
# ---------------------------------------------------------------------------------------------------

def _conv_like(old: nn.Conv2d, in_chans: int, stride: int | None = None) -> nn.Conv2d:
    """A fresh Conv2d shaped like `old` with `in_chans` inputs (and `stride` if given)."""
    return nn.Conv2d(in_chans, old.out_channels, old.kernel_size, stride=stride or old.stride,
                     padding=old.padding, groups=old.groups, bias=old.bias is not None)


@register("mobilenetv1")
def mobilenetv1(size: str, num_classes: int, in_chans: int) -> nn.Module:
    """MobileNetV1 1.0 (Howard et al. 2017; timm `mobilenetv1_100`: 13 depthwise-separable blocks, ReLU6).

    Proxy: width 0.5 (timm's generator with channel multiplier 0.5) and a stride-1 stem, so 32 px end
    in a 2×2 map (as the MobileNetV2 proxy).
    """
    if size == "paper":
        return timm.create_model("mobilenetv1_100", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    from timm.models.efficientnet import _gen_mobilenet_v1
    model = _gen_mobilenet_v1("mobilenetv1_100", 0.5, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    model.conv_stem.stride = (1, 1)
    return model


@register("mobilenetv3_large")
def mobilenetv3_large(size: str, num_classes: int, in_chans: int) -> nn.Module:
    """MobileNetV3-Large 1.0 (Howard et al. 2019; timm `mobilenetv3_large_100`: hard-swish, SE, 1280-d head).

    Proxy: width 0.5 (timm's generator with channel multiplier 0.5; stem and 1280-d head conv kept as
    timm does below 0.75) and a stride-1 stem, so 32 px end in a 2×2 map.
    """
    if size == "paper":
        return timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=num_classes,
                                 in_chans=in_chans)
    from timm.models.mobilenetv3 import _gen_mobilenet_v3
    model = _gen_mobilenet_v3("mobilenetv3_large_100", 0.5, pretrained=False, num_classes=num_classes,
                              in_chans=in_chans)
    model.conv_stem.stride = (1, 1)
    return model


@register("mobilenext_x1.4")
def mobilenext_x1_4(size: str, num_classes: int, in_chans: int) -> nn.Module:
    """MobileNeXt-1.4 (Zhou et al. 2020, "Rethinking Bottleneck Structure for Efficient Mobile Network
    Design"; sandglass blocks, width multiplier 1.4; 6.1 M parameters), written in `mobilenext.py`.

    Proxy: width 0.5 instead of 1.4 (the last stage keeps its base 1280 channels, as the authors' code
    does below width 1) and a stride-1 stem, so 32 px end in a 2×2 map (as the MobileNetV2 proxy).
    """
    from .mobilenext import MobileNeXt
    if size == "paper":
        return MobileNeXt(num_classes=num_classes, width_mult=1.4, in_chans=in_chans)
    return MobileNeXt(num_classes=num_classes, width_mult=0.5, in_chans=in_chans, stem_stride=1)


@register("efficientnet_b0")
def efficientnet_b0(size: str, num_classes: int, in_chans: int) -> nn.Module:
    """EfficientNet-B0 (Tan & Le 2019; timm `efficientnet_b0`: MBConv with SE, swish, 1280-d head).

    Proxy: width 0.5 (timm's generator with channel multiplier 0.5, all 16 blocks kept) and a stride-1
    stem, so 32 px end in a 2×2 map.
    """
    if size == "paper":
        return timm.create_model("efficientnet_b0", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    from timm.models.efficientnet import _gen_efficientnet
    model = _gen_efficientnet("efficientnet_b0", channel_multiplier=0.5, depth_multiplier=1.0, pretrained=False,
                              num_classes=num_classes, in_chans=in_chans)
    model.conv_stem.stride = (1, 1)
    return model


@register("shufflenetv2_1.0")
def shufflenetv2_1_0(size: str, num_classes: int, in_chans: int) -> nn.Module:
    """ShuffleNetV2 1.0× (Ma et al. 2018; torchvision `shufflenet_v2_x1_0`).

    The first conv is rebuilt for `in_chans` ≠ 3. Proxy: the 0.5× channel widths (torchvision
    `shufflenet_v2_x0_5`: 24-48-96-192, 1024-d conv5, same depth) and a stride-1 first conv (max-pool
    kept), so 32 px end in a 2×2 map.
    """
    from torchvision.models import shufflenet_v2_x0_5, shufflenet_v2_x1_0
    builder = shufflenet_v2_x1_0 if size == "paper" else shufflenet_v2_x0_5
    model = builder(weights=None, num_classes=num_classes)
    conv1 = model.conv1[0]
    if in_chans != conv1.in_channels or size == "proxy":
        # PyTorch's default init, as torchvision's ShuffleNetV2 uses for every conv
        model.conv1[0] = _conv_like(conv1, in_chans=in_chans, stride=1 if size == "proxy" else None)
    return model


@register("seresnet50")
def seresnet50(size: str, num_classes: int, in_chans: int) -> nn.Module:
    """SE-ResNet-50 (Hu et al. 2018; timm `seresnet50`: ResNet-50 bottlenecks [3, 4, 6, 3] with SE).

    Proxy: half the channels (stage widths 32-64-128-256, i.e. 128…1024 bottleneck outputs; stem 64) and,
    as the ResNet18 proxy, a 3×3 stride-2 stem conv with the max-pool kept (8×8 into layer1, 1×1 out).
    """
    if size == "paper":
        return timm.create_model("seresnet50", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    model = timm.create_model("seresnet50", pretrained=False, num_classes=num_classes, in_chans=in_chans,
                              channels=(32, 64, 128, 256))
    model.conv1 = nn.Conv2d(in_chans, 64, 3, stride=2, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


# VGG-16 (configuration D) with every width divided by 4.
_VGG16_PROXY_CFG = [16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128, "M"]


@register("vgg16")
def vgg16(size: str, num_classes: int, in_chans: int) -> nn.Module:
    """VGG-16 (Simonyan & Zisserman 2015, configuration D, no BatchNorm; timm `vgg16`: 13 3×3 convs,
    then fc6/fc7 as a 7×7 and a 1×1 conv (4096) and the fc8 classifier).

    Proxy: every conv width divided by 4 (16…128) with all five max-pools (32 px → 1×1), and the
    classifier adapted to the 1×1 map: fc6 a 1×1 conv, fc6/fc7 512 wide (4096/8), then fc8.
    """
    if size == "paper":
        return timm.create_model("vgg16", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    from timm.layers import ClassifierHead
    from timm.models.vgg import VGG, ConvMlp
    # Built on the meta device: timm's VGG always makes the 4096-wide 7×7 fc6 first (≈43 M parameters,
    # a second to initialise), which the proxy replaces before any memory is allocated.
    model = VGG(_VGG16_PROXY_CFG, num_classes=num_classes, in_chans=in_chans, device="meta")
    hidden = 512
    model.pre_logits = ConvMlp(model.num_features, hidden, kernel_size=1, drop_rate=0.0, device="meta")
    model.head = ClassifierHead(hidden, num_classes, pool_type="avg", device="meta")
    model.head_hidden_size = hidden
    model = model.to_empty(device="cpu")
    assert not list(model.buffers())  # no BatchNorm: every tensor is a Conv2d/Linear parameter
    model._initialize_weights()       # timm's VGG init: He-normal (fan-out) convs, N(0, 0.01) linear
    return model
