"""Building blocks of the SD KL autoencoder, in the LDM / SGM parameter layout.

Matches ``sgm.modules.diffusionmodules.model`` (``ResnetBlock`` without a timestep
embedding, the "vanilla" ``AttnBlock``, ``Downsample`` / ``Upsample`` with convs) in
parameter names and arithmetic: GroupNorm(32 groups, eps=1e-6) and SiLU throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def normalize(channels: int) -> nn.GroupNorm:
    """The autoencoder's GroupNorm: 32 groups, eps 1e-6, affine."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def conv_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the memory layout the autoencoder's convolutions run fastest in on its device.

    On the CPU that is channels-last: oneDNN's convolutions are faster in NHWC, as ``bench/sample.py``'s
    decoder profile showed (and diffusers' decoder, whose reshapes leave it in NHWC, was faster than
    ours in NCHW for that reason; docs/benchmarks.md). Elsewhere the layout is left alone:
    on CUDA, GroupNorm's kernels want NCHW and the trade-off has not been measured here.
    """
    if x.device.type == "cpu" and x.ndim == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """The 3x3, padding-1 convolution used for ``conv_in`` / ``conv_out``."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class ResnetBlock(nn.Module):
    """norm1-SiLU-conv1, norm2-SiLU-dropout-conv2, plus a 1x1 ``nin_shortcut`` when widths differ."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut: nn.Module = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv ``q``, ``k``, ``v`` and ``proj_out``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        # (b, c, h, w) -> (b, 1 head, h*w tokens, c)
        q, k, v = (m(hn).flatten(2).transpose(1, 2).unsqueeze(1) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(c), as in the reference
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 ``conv`` after asymmetric (0, 1, 0, 1) zero padding."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour x2 followed by a 3x3 ``conv``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
