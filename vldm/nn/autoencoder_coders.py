"""The SD autoencoder's encoder and decoder stacks (``sgm.modules.diffusionmodules.model.Encoder`` / ``Decoder``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vldm.nn.autoencoder_blocks import AttnBlock, Downsample, ResnetBlock, Upsample, conv3x3, conv_layout, normalize


class Encoder(nn.Module):
    """Image -> posterior parameters (``2 * z_channels`` channels when ``double_z``).

    Takes the SD ``ddconfig`` keywords; ``out_ch`` is accepted and unused, as in the reference.
    """

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 4),
                 num_res_blocks: int, attn_resolutions: Sequence[int] = (), dropout: float = 0.0,
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in, curr_res = ch, resolution
        for i_level, mult in enumerate(ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_out = ch * mult
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(block_in, block_out, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i_level != self.num_resolutions - 1:
                level.downsample = Downsample(block_in)
                curr_res //= 2
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout)
        self.norm_out = normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(conv_layout(x))
        for i_level, level in enumerate(self.down):
            for i_block, block in enumerate(level.block):
                h = block(h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()


class Decoder(nn.Module):
    """Latent (``z_channels``) -> image (``out_ch``); ``up[i]`` is level ``i``, level 0 full resolution.

    Takes the SD ``ddconfig`` keywords; ``in_channels`` and ``double_z`` are accepted and unused,
    so one ``ddconfig`` dict builds both halves. ``resblock`` and ``conv_out`` build those layers
    (the temporal decoder, :mod:`vldm.nn.temporal_decoder`, swaps in video versions); keyword
    arguments of ``forward`` go to them, and only to them.
    """

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 4),
                 num_res_blocks: int, attn_resolutions: Sequence[int] = (), dropout: float = 0.0,
                 in_channels: int, resolution: int, z_channels: int, double_z: bool = True,
                 resblock: Callable[[int, int, float], nn.Module] = ResnetBlock,
                 conv_out: Callable[[int, int], nn.Module] = conv3x3) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        block_in = ch * ch_mult[-1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = resblock(block_in, block_in, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = resblock(block_in, block_in, dropout)
        levels: list[nn.Module] = []
        for i_level in reversed(range(self.num_resolutions)):  # built coarse to fine
            level = nn.Module()
            level.block = nn.ModuleList()
            level.attn = nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                level.block.append(resblock(block_in, block_out, dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    level.attn.append(AttnBlock(block_in))
            if i_level != 0:
                level.upsample = Upsample(block_in)
                curr_res *= 2
            levels.append(level)
        self.up = nn.ModuleList(reversed(levels))  # index by level
        self.norm_out = normalize(block_in)
        self.conv_out = conv_out(block_in, out_ch)

    def forward(self, z: torch.Tensor, **block_kwargs) -> torch.Tensor:
        h = self.conv_in(conv_layout(z))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, **block_kwargs)), **block_kwargs)
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block, block in enumerate(level.block):
                h = block(h, **block_kwargs)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)), **block_kwargs).contiguous()
