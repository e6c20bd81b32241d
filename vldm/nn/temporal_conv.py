"""A Conv3d whose kernel spans time only, computed as a 2-D convolution over (time, pixels).

The temporal convolutions of Video LDM / SVD (``time_stack`` resblocks, the decoder's
``time_mix_conv``) have kernels ``(k, 1, 1)``: every pixel is filtered along time on its own.
Seen as ``(b, c, t, h * w)`` that is exactly a ``(k, 1)`` Conv2d with the same weights. On one CPU
thread PyTorch runs Conv3d on its fallback ``slow_conv3d``, which the Conv2d beats forward and
backward; with more threads PyTorch picks oneDNN's Conv3d and the two are at parity. Channels-last
inputs (the autoencoder's layout on CPU, see :func:`vldm.nn.autoencoder_blocks.conv_layout`) keep
Conv3d, which oneDNN runs channels-last as fast, where the reshaped Conv2d would reorder them first
(figures: docs/benchmarks.md, ``python -m bench.temporal_conv``). The module keeps ``nn.Conv3d``'s
parameters and state-dict keys, so checkpoints and ``isinstance(m, nn.Conv3d)`` checks are
unchanged; other kernels use the ordinary Conv3d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _channels_last_only(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


class TemporalConv3d(nn.Conv3d):
    """``nn.Conv3d`` on ``(b, c, t, h, w)``; a time-only kernel runs as a Conv2d over ``(t, h * w)``."""

    @property
    def time_only(self) -> bool:
        return (self.kernel_size[1:] == (1, 1) and self.stride[1:] == (1, 1) and self.dilation[1:] == (1, 1)
                and tuple(self.padding[1:]) == (0, 0) and self.padding_mode == "zeros")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.time_only or x.dim() != 5 or _channels_last_only(x):
            return super().forward(x)
        b, _, t, h, w = x.shape
        y = F.conv2d(x.reshape(b, x.shape[1], t, h * w), self.weight.squeeze(-1), self.bias,
                     stride=(self.stride[0], 1), padding=(self.padding[0], 0), dilation=(self.dilation[0], 1),
                     groups=self.groups)
        return y.reshape(b, y.shape[1], y.shape[2], h, w)
