"""Residual blocks, resampling and the sinusoidal timestep embedding of the SD UNet.

Parameter names follow ``sgm.modules.diffusionmodules.openaimodel`` (``in_layers``,
``emb_layers``, ``out_layers``, ``skip_connection``, ``op``, ``conv``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vldm.nn.attention import group_norm
from vldm.nn.temporal_conv import TemporalConv3d


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, cosines first (as in SGM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    return {2: nn.Conv2d, 3: TemporalConv3d}[dims](*args, **kwargs)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the timestep embedding added in between.

    ``dims=3`` with ``kernel_size=(3, 1, 1)`` is the temporal resblock of Video LDM / SVD
    (``time_stack``); it takes ``x`` as ``(b, c, t, h, w)`` and ``emb`` as ``(b, t, e)``.
    The last conv starts at zero, so a fresh block is the identity on ``x``.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 dropout: float = 0.0, dims: int = 2, kernel_size: int | Sequence[int] = 3) -> None:
        super().__init__()
        out_channels = out_channels or channels
        padding = [k // 2 for k in kernel_size] if isinstance(kernel_size, Sequence) else kernel_size // 2
        self.dims = dims
        self.in_layers = nn.Sequential(
            group_norm(channels, eps=1e-5), nn.SiLU(),
            conv_nd(dims, channels, out_channels, kernel_size, padding=padding),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            group_norm(out_channels, eps=1e-5), nn.SiLU(), nn.Dropout(dropout),
            conv_nd(dims, out_channels, out_channels, kernel_size, padding=padding),
        )
        nn.init.zeros_(self.out_layers[-1].weight)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip_connection = nn.Identity() if out_channels == channels else conv_nd(dims, channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)
        if self.dims == 3:  # emb is (b, t, c): move channels before time
            emb_out = rearrange(emb_out, "b t c -> b c t")
        while emb_out.ndim < h.ndim:
            emb_out = emb_out[..., None]
        h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv (``op``)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (``conv``)."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
