"""MobileNeXt (Zhou, Hou, Chen, Feng, Yan, "Rethinking Bottleneck Structure for Efficient Mobile Network
Design", ECCV 2020, arXiv:2007.02269), written here because no maintained package provides it.

Sandglass block (paper Fig. 3(b) / Table 2), input M channels, output N channels, reduction ratio t:

    dw 3×3, BN, ReLU6          M → M        (spatial conv at the wide end)
    pw 1×1, BN (linear)        M → M/t      (bottleneck, no activation: "linear bottleneck")
    pw 1×1, BN, ReLU6          M/t → N
    dw 3×3 stride s, BN (linear)  N → N
    + identity shortcut (between the wide ends) when s = 1 and M = N.

Network (paper Table 1, width multiplier 1.0; every channel count is scaled by the width multiplier and
rounded to a multiple of 8): conv 3×3/2 (32, BN, ReLU6) → sandglass stages (t, c, n, s):
(2, 96, 1, 2), (6, 144, 1, 1), (6, 192, 3, 2), (6, 288, 3, 2), (6, 384, 4, 1), (6, 576, 4, 2),
(6, 960, 3, 1), (6, 1280, 1, 1) → global average pool → (dropout 0.2) → fully connected to k classes.

Details the paper's tables leave open follow the authors' released code
(github.com/zhoudaquan/rethinking_bottleneck_design, mirrored at github.com/yitu-opensource/MobileNeXt,
`mobilenext/codebase/models/mnext.py`; re-implemented here, not copied), and reproduce the paper's model size:
6.1 M parameters for MobileNeXt-1.4 (the registry test checks 6.0–6.2 M) and 3.4–3.5 M for 1.0:
- the bottleneck width is M // t, but at least ceil(N/6) rounded to a multiple of 16;
- the first block of a stage that changes the channel count drops the first depthwise conv; when it
  also keeps the resolution (s = 1) it drops the last one too, so it
  is a pair of pointwise convs; a single-block stage with s = 1 and the t = 2 first block keep both;
- shortcuts are full identity (identity tensor multiplier 1.0);
- below width 1 the last stage keeps its 1280 channels (as MobileNetV2's head).
Weights are initialised as in that code (He-normal fan-out convs, N(0, 0.01) classifier), and module
names follow it (`features.<i>.conv.<j>`, `classifier.1`).

The registry's `mobilenext_x1.4` uses width multiplier 1.4 at paper size; the proxy (32 px) variant is
built from the same class with width 0.5 and a stride-1 stem (see registry.py).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

# (t, c, n, s) of paper Table 1.
MOBILENEXT_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (2, 96, 1, 2),
    (6, 144, 1, 1),
    (6, 192, 3, 2),
    (6, 288, 3, 2),
    (6, 384, 4, 1),
    (6, 576, 4, 2),
    (6, 960, 3, 1),
    (6, 1280, 1, 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round `v` to the nearest multiple of `divisor`, never going more than 10% below `v`."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _conv_bn(inp: int, oup: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(oup)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class SandglassBlock(nn.Module):
    """dw3×3+ReLU6 → pw (linear, M→M/t) → pw+ReLU6 (→N) → dw3×3 stride s (linear), identity shortcut."""

    def __init__(self, inp: int, oup: int, stride: int, reduction: int,
                 first_dw: bool = True, last_dw: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 2 and not last_dw:
            raise ValueError("a strided sandglass block needs its last depthwise conv")
        hidden = inp // reduction
        if hidden < oup / 6.0:
            hidden = make_divisible(math.ceil(oup / 6.0), 16)
        layers: list[nn.Module] = []
        if first_dw:
            layers += _conv_bn(inp, inp, 3, 1, groups=inp, act=True)
        layers += _conv_bn(inp, hidden, 1, act=False)
        layers += _conv_bn(hidden, oup, 1, act=True)
        if last_dw:
            layers += _conv_bn(oup, oup, 3, stride, groups=oup, act=False)
        self.conv = nn.Sequential(*layers)
        self.use_shortcut = stride == 1 and inp == oup
        self.in_channels, self.out_channels, self.hidden_channels = inp, oup, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return out + x if self.use_shortcut else out


class MobileNeXt(nn.Module):
    """MobileNeXt classifier (see module docstring).

    `stages`: (t, c, n, s) rows (paper Table 1 by default); `stem_stride`: stride of the first 3×3 conv
    (2 at ImageNet size); `stem_channels`: before the width multiplier.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, in_chans: int = 3,
                 stages: Sequence[tuple[int, int, int, int]] = MOBILENEXT_STAGES, stem_channels: int = 32,
                 stem_stride: int = 2, drop_rate: float = 0.2) -> None:
        super().__init__()
        inp = make_divisible(stem_channels * width_mult)
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(in_chans, inp, 3, stem_stride, act=True))]
        for j, (t, c, n, s) in enumerate(stages):
            oup = make_divisible(c * width_mult)
            if j == len(stages) - 1 and width_mult < 1:
                oup = max(oup, c)  # the last stage (1280) is not thinned below width 1 (authors' code)
            for i in range(n):
                stride = s if i == 0 else 1
                if inp == oup and stride == 1:
                    first_dw = last_dw = True          # regular block, identity shortcut
                elif t == 2 or (n == 1 and stride == 1):
                    first_dw = last_dw = True          # first block of the net / single-block stride-1 stage
                else:
                    first_dw, last_dw = False, stride == 2  # channel-changing first block of a stage
                layers.append(SandglassBlock(inp, oup, stride, t, first_dw=first_dw, last_dw=last_dw))
                inp = oup
        self.features = nn.Sequential(*layers)
        self.num_features = inp
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(inp, num_classes))
        self._initialize_weights()

    def _initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.global_pool(self.features(x)).flatten(1))
