"""Temporal layers that turn an image UNet into a video UNet.

Blattmann et al., 2023, "Align your Latents" (Video LDM) and "Stable Video Diffusion": every
spatial layer gets a temporal partner, and a learned blend ``time_mixer`` mixes the two,
``out = a * spatial + (1 - a) * temporal`` with ``a = sigmoid(mix_factor)``, forced to 1 on
frames flagged image-only. Parameter names match ``sgm.modules.video_attention`` and
``sgm.modules.diffusionmodules.video_model`` (``time_stack``, ``time_mixer``, ``time_pos_embed``).

Video tensors travel through the UNet as ``(batch * frames, c, h, w)``; each layer here is
told ``num_frames``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange, repeat
from torch import nn

from vldm.nn.attention import CrossAttention, FeedForward, SpatialTransformer
from vldm.nn.resblock import ResBlock, timestep_embedding


class AlphaBlender(nn.Module):
    """``a * x_spatial + (1 - a) * x_temporal`` with ``a = sigmoid(mix_factor)``.

    ``image_only_indicator`` (``(b, t)``, 1 for frames that are stills) forces ``a = 1`` there,
    so stills pass through the image path alone ("learned_with_images" in SGM).
    """

    def __init__(self, alpha: float = 0.5, layout: str = "b t -> (b t) 1 1") -> None:
        super().__init__()
        self.mix_factor = nn.Parameter(torch.tensor([alpha]))
        self.layout = layout

    def forward(self, x_spatial: torch.Tensor, x_temporal: torch.Tensor,
                image_only_indicator: torch.Tensor) -> torch.Tensor:
        alpha = torch.where(image_only_indicator.bool(), torch.ones_like(image_only_indicator, dtype=torch.float32),
                            torch.sigmoid(self.mix_factor.float()))
        alpha = rearrange(alpha, self.layout).to(x_spatial.dtype)
        return alpha * x_spatial + (1.0 - alpha) * x_temporal


class VideoResBlock(ResBlock):
    """A spatial ResBlock followed by a temporal 3D ResBlock (kernel ``(3, 1, 1)``) and a blend."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None,
                 dropout: float = 0.0, video_kernel_size: Sequence[int] = (3, 1, 1),
                 merge_factor: float = 0.5) -> None:
        super().__init__(channels, emb_channels, out_channels, dropout)
        out_channels = out_channels or channels
        self.time_stack = ResBlock(out_channels, emb_channels, out_channels, dropout, dims=3,
                                   kernel_size=tuple(video_kernel_size))
        self.time_mixer = AlphaBlender(merge_factor, layout="b t -> b 1 t 1 1")

    def forward(self, x: torch.Tensor, emb: torch.Tensor, num_frames: int = 1,
                image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        x = super().forward(x, emb)
        x = rearrange(x, "(b t) c h w -> b c t h w", t=num_frames)
        x_temporal = self.time_stack(x, rearrange(emb, "(b t) e -> b t e", t=num_frames))
        x = self.time_mixer(x, x_temporal, _indicator(image_only_indicator, x.shape[0], num_frames, x))
        return rearrange(x, "b c t h w -> (b t) c h w")


class VideoTransformerBlock(nn.Module):
    """Attention across frames at each pixel: ``ff_in``, self-attention over time,
    cross-attention to the conditioning context, feed-forward; each residual.

    Its sequences are short (``num_frames``) and many (one per pixel), so
    :func:`vldm.nn.attention.set_chunking` bounds it by running groups of whole pixel-sequences
    at a time, and the feed-forwards over chunks of tokens."""

    def __init__(self, dim: int, n_heads: int, d_head: int, context_dim: int | None = None,
                 dropout: float = 0.0, ff_in: bool = True) -> None:
        super().__init__()
        self.use_ff_in = ff_in
        if ff_in:
            self.norm_in = nn.LayerNorm(dim)
            self.ff_in = FeedForward(dim, dim, dropout=dropout)
        self.attn1 = CrossAttention(dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads=n_heads, dim_head=d_head, dropout=dropout)
        self.ff = FeedForward(dim, dim, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None, num_frames: int) -> torch.Tensor:
        tokens = x.shape[1]
        x = rearrange(x, "(b t) s c -> (b s) t c", t=num_frames)
        if self.use_ff_in:
            x = self.ff_in(self.norm_in(x)) + x
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x)) + x
        return rearrange(x, "(b s) t c -> (b t) s c", s=tokens)

    def residual_outputs(self) -> list[nn.Linear]:
        """The last layer of every residual branch (zeroed by :func:`vldm.nn.inflate.inflate`)."""
        outs = [self.attn1.to_out[0], self.attn2.to_out[0], self.ff.net[2]]
        return outs + ([self.ff_in.net[2]] if self.use_ff_in else [])


class SpatialVideoTransformer(SpatialTransformer):
    """A SpatialTransformer whose every block is followed by a temporal block and a blend.

    The temporal cross-attention sees the first frame's context (``use_spatial_context``
    in SGM); a frame-index sinusoid through ``time_pos_embed`` is added before it.
    """

    def __init__(self, in_channels: int, n_heads: int, d_head: int, depth: int = 1,
                 context_dim: int | None = None, dropout: float = 0.0, use_linear: bool = True,
                 merge_factor: float = 0.5, ff_in: bool = True, max_time_embed_period: int = 10000) -> None:
        super().__init__(in_channels, n_heads, d_head, depth, context_dim, dropout, use_linear)
        inner_dim = n_heads * d_head
        self.max_time_embed_period = max_time_embed_period
        self.time_stack = nn.ModuleList(
            VideoTransformerBlock(inner_dim, n_heads, d_head, context_dim, dropout, ff_in) for _ in range(depth)
        )
        self.time_pos_embed = nn.Sequential(
            nn.Linear(in_channels, in_channels * 4), nn.SiLU(), nn.Linear(in_channels * 4, in_channels)
        )
        self.time_mixer = AlphaBlender(merge_factor)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, num_frames: int = 1,
                image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        time_context = None
        if context is not None:  # first frame's context, repeated for every pixel
            time_context = repeat(context[::num_frames], "b n c -> (b s) n c", s=h * w)
        y = self.project_in(x)
        frame_index = torch.arange(num_frames, device=x.device).repeat(x.shape[0] // num_frames)
        pos = self.time_pos_embed(
            timestep_embedding(frame_index, self.norm.num_channels, self.max_time_embed_period).to(y.dtype)
        )[:, None]
        alpha_mask = _indicator(image_only_indicator, x.shape[0] // num_frames, num_frames, y)
        for block, mix_block in zip(self.transformer_blocks, self.time_stack):
            y = block(y, context)
            y_temporal = mix_block(y + pos, time_context, num_frames)
            y = self.time_mixer(y, y_temporal, alpha_mask)
        return self.project_out(y, h, w) + x

    def temporal_residual_outputs(self) -> list[nn.Linear]:
        outs = [self.time_pos_embed[2]]
        for block in self.time_stack:
            outs += block.residual_outputs()
        return outs


def _indicator(image_only_indicator: torch.Tensor | None, batch: int, num_frames: int,
               like: torch.Tensor) -> torch.Tensor:
    if image_only_indicator is None:
        return torch.zeros(batch, num_frames, device=like.device)
    return image_only_indicator
