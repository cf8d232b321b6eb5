"""ChannelClip: ReLU6 with a per-channel clip level, so Cross-Layer Equalization keeps the FP function.

relu6 is not positive-homogeneous: relu6(x / s) ≠ relu6(x) / s. But min(relu(x / s), 6 / s) =
relu6(x) / s exactly, so when CLE divides output channel i of the layer before a ReLU6 by s_i, the
clip level of channel i becomes 6 / s_i, and high-bias absorption (x → x − c) lowers it to 6 / s_i − c_i.
DFQ and AIMET replace ReLU6 by ReLU instead, which changes the network (docs/DEVIATIONS.md).
"""
from __future__ import annotations

import torch
from torch import nn


class ChannelClip(nn.Module):
    """y = min(max(x, 0), upper[c]) for channel c (dim 1)."""

    def __init__(self, upper: torch.Tensor):
        super().__init__()
        self.register_buffer("upper", upper.detach().clone())

    @classmethod
    def like_relu6(cls, channels: int, like: torch.Tensor) -> "ChannelClip":
        return cls(torch.full((channels,), 6.0, device=like.device, dtype=like.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upper = self.upper.view((1, -1) + (1,) * (x.dim() - 2)).to(x.dtype)
        return torch.minimum(torch.relu(x), upper)

    def extra_repr(self) -> str:
        return f"channels={self.upper.numel()}"
