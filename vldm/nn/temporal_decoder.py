"""The temporally-aware VAE decoder of Stable Video Diffusion (Blattmann et al., 2023, Sec. 4).

SVD fine-tunes the SD decoder on video with temporal layers, so that decoded frames do not
flicker. This matches ``sgm.modules.autoencoding.temporal_ae.VideoDecoder`` with its default
``time_mode="conv-only"`` in parameter names and arithmetic:

- every decoder ``ResnetBlock`` gains ``time_stack``, a 3D ResBlock over ``(c, t, h, w)`` with a
  ``(3, 1, 1)`` kernel and no timestep embedding (``in_layers.{0,2}``, ``out_layers.{0,3}``), and a
  bare ``mix_factor``; ``out = a * temporal + (1 - a) * spatial`` with ``a = sigmoid(mix_factor)``
  (note: the opposite way round from the UNet's ``AlphaBlender``);
- ``conv_out`` is the 2D conv followed by ``conv_out.time_mix_conv``, a Conv3d over time;
- attention blocks stay spatial; there is no ``quant_conv`` / ``post_quant_conv`` in SVD.

Frames travel folded into the batch, ``(b * t, c, h, w)``; ``forward`` is told ``num_frames``.
The temporal convolutions see only the frames of one call, and the GroupNorms of ``time_stack``
normalise over all ``t`` frames of a clip, so every frame depends weakly on the whole clip and
strongly on the ``temporal_receptive_radius`` frames on each side.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from einops import rearrange
from torch import nn

from vldm.nn.autoencoder_coders import Decoder
from vldm.nn.autoencoder_blocks import ResnetBlock
from vldm.nn.resblock import ResBlock
from vldm.nn.temporal_conv import TemporalConv3d


def as_kernel3d(kernel_size: int | Sequence[int]) -> tuple[int, int, int]:
    """``3`` -> ``(3, 3, 3)``; a sequence must have three odd sizes (time, height, width)."""
    k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(int(v) for v in kernel_size)
    if len(k) != 3 or any(v % 2 == 0 for v in k):
        raise ValueError(f"video_kernel_size must be three odd sizes (t, h, w), got {kernel_size!r}")
    return k


class FrameStackResBlock(ResBlock):
    """The decoder's ``time_stack``: a 3D :class:`ResBlock` without a timestep embedding.

    ``x``: ``(b, c, t, h, w)``. Its last conv starts at zero, so a fresh block is the identity.
    """

    def __init__(self, channels: int, dropout: float = 0.0, kernel_size: Sequence[int] = (3, 1, 1)) -> None:
        super().__init__(channels, emb_channels=1, out_channels=channels, dropout=dropout, dims=3,
                         kernel_size=tuple(kernel_size))
        del self.emb_layers  # the reference block has no timestep input ("skip_t_emb")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.skip_connection(x) + self.out_layers(self.in_layers(x))


class VideoResnetBlock(ResnetBlock):
    """A spatial :class:`ResnetBlock`, then ``time_stack`` over frames, blended by ``mix_factor``."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 video_kernel_size: Sequence[int] = (3, 1, 1), mix_factor: float = 0.0) -> None:
        super().__init__(in_channels, out_channels, dropout)
        self.time_stack = FrameStackResBlock(self.out_channels, dropout, video_kernel_size)
        self.mix_factor = nn.Parameter(torch.tensor([float(mix_factor)]))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        spatial = rearrange(super().forward(x), "(b t) c h w -> b c t h w", t=num_frames)
        temporal = self.time_stack(spatial)
        alpha = torch.sigmoid(self.mix_factor.float()).to(spatial.dtype)
        return rearrange(alpha * temporal + (1.0 - alpha) * spatial, "b c t h w -> (b t) c h w")


class TimeMixConv(nn.Conv2d):
    """``conv_out``: a 3x3 Conv2d per frame, then ``time_mix_conv`` (Conv3d) across frames.

    ``time_mix_conv`` starts as the identity (centre tap = identity matrix, zero elsewhere), so a
    fresh temporal decoder filled with image-decoder weights decodes exactly like it; released
    weights replace it.
    """

    def __init__(self, in_channels: int, out_channels: int, video_kernel_size: Sequence[int] = (3, 1, 1)) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        k = tuple(video_kernel_size)
        self.time_mix_conv = TemporalConv3d(out_channels, out_channels, k, padding=[v // 2 for v in k])
        with torch.no_grad():
            if not self.time_mix_conv.weight.is_meta:
                self.time_mix_conv.weight.zero_()
                self.time_mix_conv.weight[(slice(None), slice(None), *[v // 2 for v in k])] = torch.eye(out_channels)
                self.time_mix_conv.bias.zero_()

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        h = rearrange(super().forward(x), "(b t) c h w -> b c t h w", t=num_frames)
        return rearrange(self.time_mix_conv(h), "b c t h w -> (b t) c h w")


class TemporalDecoder(Decoder):
    """The SD :class:`~vldm.nn.autoencoder.Decoder` with SVD's temporal layers ("conv-only")."""

    def __init__(self, *, video_kernel_size: int | Sequence[int] = (3, 1, 1), **ddconfig) -> None:
        kernel = as_kernel3d(video_kernel_size)
        super().__init__(**ddconfig, resblock=partial(VideoResnetBlock, video_kernel_size=kernel),
                         conv_out=partial(TimeMixConv, video_kernel_size=kernel))
        self.video_kernel_size = kernel

    @property
    def temporal_receptive_radius(self) -> int:
        """Frames on each side that reach a decoded frame through the temporal convolutions
        (all on the main path, so their radii add up: 29 for the SVD decoder)."""
        return sum(m.kernel_size[0] // 2 * m.dilation[0] for m in self.modules() if isinstance(m, nn.Conv3d))

    def forward(self, z: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:  # type: ignore[override]
        """``z``: ``(b * t, c, h, w)``, ``b`` clips of ``num_frames`` frames (None: one clip)."""
        num_frames = z.shape[0] if num_frames is None else int(num_frames)
        if num_frames < 1 or z.shape[0] % num_frames:
            raise ValueError(f"{z.shape[0]} latents are not a whole number of clips of {num_frames} frames")
        return super().forward(z, num_frames=num_frames)
