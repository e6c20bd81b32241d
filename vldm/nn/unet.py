"""The SD 2.x image UNet and the SVD video UNet, one class.

Structure and parameter names follow ``sgm.modules.diffusionmodules.openaimodel.UNetModel``
(``video=False``) and ``sgm.modules.diffusionmodules.video_model.VideoUNet`` (``video=True``):
``time_embed``, ``label_emb``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``.
With ``video=True`` every ResBlock is a :class:`VideoResBlock` and every transformer a
:class:`SpatialVideoTransformer`; frames travel folded into the batch, ``(b * t, c, h, w)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vldm.nn.attention import SpatialTransformer, group_norm
from vldm.nn.resblock import Downsample, ResBlock, Upsample, timestep_embedding
from vldm.nn.temporal import SpatialVideoTransformer, VideoResBlock


class UNetBlock(nn.ModuleList):
    """One SGM block (``input_blocks[i]``, ``middle_block``, ``output_blocks[i]``): its layers in
    order, each given the inputs it takes. A module the UNet calls, so FSDP and activation
    checkpointing can take a block as their unit (:mod:`vldm.training.strategies`)."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None, num_frames: int,
                image_only_indicator: torch.Tensor | None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, VideoResBlock):
                h = layer(h, emb, num_frames, image_only_indicator)
            elif isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialVideoTransformer):
                h = layer(h, context, num_frames, image_only_indicator)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            else:
                h = layer(h)
        return h


@dataclass
class UNetConfig:
    """Sizes of the UNet; the SD 2.1 and SVD values are in ``configs/model``."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: Sequence[int] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    adm_in_channels: int | None = None  # vector conditioning width (SVD: 768); None = none
    use_linear_in_transformer: bool = True
    dropout: float = 0.0
    video: bool = False
    video_kernel_size: Sequence[int] = (3, 1, 1)
    merge_factor: float = 0.5
    extra_ff_mix_layer: bool = True
    gradient_checkpointing: bool = False


class UNet(nn.Module):
    """Denoising UNet ``F(x, c_noise, context, y)`` over latents, for stills or videos."""

    def __init__(self, **kwargs) -> None:
        super().__init__()
        cfg = UNetConfig(**kwargs)
        self.config = cfg
        mc = cfg.model_channels
        temb = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))
        if cfg.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(nn.Linear(cfg.adm_in_channels, temb), nn.SiLU(), nn.Linear(temb, temb))
            )

        def resblock(ch: int, out: int) -> nn.Module:
            if cfg.video:
                return VideoResBlock(ch, temb, out, cfg.dropout, cfg.video_kernel_size, cfg.merge_factor)
            return ResBlock(ch, temb, out, cfg.dropout)

        def transformer(ch: int) -> nn.Module:
            heads, d_head = ch // cfg.num_head_channels, cfg.num_head_channels
            if cfg.video:
                return SpatialVideoTransformer(ch, heads, d_head, cfg.transformer_depth, cfg.context_dim,
                                               cfg.dropout, cfg.use_linear_in_transformer, cfg.merge_factor,
                                               cfg.extra_ff_mix_layer)
            return SpatialTransformer(ch, heads, d_head, cfg.transformer_depth, cfg.context_dim, cfg.dropout,
                                      cfg.use_linear_in_transformer)

        self.input_blocks = nn.ModuleList([UNetBlock([nn.Conv2d(cfg.in_channels, mc, 3, padding=1)])])
        skip_channels, ch, ds = [mc], mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [resblock(ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(UNetBlock(layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(UNetBlock([Downsample(ch)]))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = UNetBlock([resblock(ch, ch), transformer(ch), resblock(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [resblock(ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(UNetBlock(layers))
        self.out = nn.Sequential(group_norm(ch, eps=1e-5), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def config_dict(self) -> dict:
        return asdict(self.config)

    def _block(self, block: UNetBlock, *args) -> torch.Tensor:
        if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None,
                y: torch.Tensor | None = None, num_frames: int = 1,
                image_only_indicator: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(b * t, c, h, w)``; ``timesteps``: ``(b * t,)`` noise levels ``c_noise``;
        ``context``: ``(b * t, n, context_dim)``; ``y``: ``(b * t, adm_in_channels)``."""
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        if self.config.adm_in_channels is not None:
            if y is None:
                raise ValueError("this UNet takes vector conditioning y (adm_in_channels is set)")
            emb = emb + self.label_emb(y.to(emb.dtype))
        args = (emb, context, num_frames, image_only_indicator)
        skips, h = [], x
        for block in self.input_blocks:
            h = self._block(block, h, *args)
            skips.append(h)
        h = self._block(self.middle_block, h, *args)
        for block in self.output_blocks:
            h = self._block(block, torch.cat([h, skips.pop()], dim=1), *args)
        return self.out(h)
