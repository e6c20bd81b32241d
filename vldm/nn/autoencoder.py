"""The KL autoencoder ("first stage") of Stable Diffusion, in the LDM / SGM parameter layout.

Matches ``sgm.modules.diffusionmodules.model.Encoder`` / ``Decoder``,
``sgm.modules.distributions.distributions.DiagonalGaussianDistribution`` and the
``AutoencoderKL`` of ``sgm.models.autoencoder``: the state-dict keys equal the released SD
checkpoints' ``first_stage_model.*`` keys without that prefix. Images are in [-1, 1]; the
latent scale factor (0.18215) is applied by the diffusion module, not here.
"""

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


class DiagonalGaussian:
    """Diagonal Gaussian posterior with ``logvar`` clamped to [-30, 20] (SGM ``DiagonalGaussianDistribution``)."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        self.mean = mean
        self.logvar = logvar.clamp(-30.0, 20.0)

    @classmethod
    def from_parameters(cls, parameters: torch.Tensor) -> DiagonalGaussian:
        """Split ``(B, 2C, ...)`` into mean and logvar along dim 1."""
        mean, logvar = parameters.chunk(2, dim=1)
        return cls(mean, logvar)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL to N(0, I) per sample, summed over all non-batch dims: shape ``(B,)``."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)


class AutoencoderKL(nn.Module):
    """SD KL autoencoder: ``encoder`` -> [``quant_conv``] -> posterior -> [``post_quant_conv``] -> ``decoder``.

    ``use_quant_conv=False`` drops both 1x1 convs (the SVD first stage); then ``embed_dim``
    must equal ``z_channels``. ``decoder="temporal"`` builds SVD's video decoder
    (:class:`~vldm.nn.temporal_decoder.TemporalDecoder`, time kernel ``video_kernel_size``)
    instead of the per-frame image decoder.
    """

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 z_channels: int = 4, embed_dim: int = 4, in_channels: int = 3, out_ch: int = 3,
                 resolution: int = 256, attn_resolutions: Sequence[int] = (), dropout: float = 0.0,
                 use_quant_conv: bool = True, decoder: str = "image",
                 video_kernel_size: int | Sequence[int] = (3, 1, 1)) -> None:
        super().__init__()
        if not use_quant_conv and embed_dim != z_channels:
            raise ValueError(f"without quant convs embed_dim ({embed_dim}) must equal z_channels ({z_channels})")
        if decoder not in ("image", "temporal"):
            raise ValueError(f"decoder must be 'image' or 'temporal', got {decoder!r}")
        ddconfig = dict(ch=ch, out_ch=out_ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                        attn_resolutions=tuple(attn_resolutions), dropout=dropout, in_channels=in_channels,
                        resolution=resolution, z_channels=z_channels, double_z=True)
        self.ch_mult = tuple(ch_mult)
        self.embed_dim = embed_dim
        self.decoder_kind = decoder
        self.encoder = Encoder(**ddconfig)
        if decoder == "temporal":
            from vldm.nn.temporal_decoder import TemporalDecoder  # it subclasses Decoder (import cycle)

            self.decoder: nn.Module = TemporalDecoder(**ddconfig, video_kernel_size=video_kernel_size)
        else:
            self.decoder = Decoder(**ddconfig)
        self.quant_conv: nn.Module | None = None
        self.post_quant_conv: nn.Module | None = None
        if use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * z_channels, 2 * embed_dim, 1)
            self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    @property
    def temporal_receptive_radius(self) -> int:
        """Frames on each side of a decoded frame that its value depends on through temporal
        convolutions (0 for the image decoder). The temporal decoder's GroupNorms also see the
        whole clip, a weak dependence not counted here; see :mod:`vldm.nn.temporal_decoder`."""
        return int(getattr(self.decoder, "temporal_receptive_radius", 0))

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        h = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return DiagonalGaussian.from_parameters(h)

    def decode(self, z: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """``z`` ``(N, embed_dim, h, w)`` -> images. The temporal decoder reads ``z`` as
        ``N // num_frames`` clips of ``num_frames`` frames (None: one clip of all ``N``); the
        image decoder decodes every latent on its own and ignores ``num_frames``."""
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        if self.decoder_kind == "temporal":
            return self.decoder(z, num_frames=num_frames)
        return self.decoder(z)

    def forward(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample() if sample else posterior.mode()
        return self.decode(z), posterior

    def encode_frames(self, x: torch.Tensor, chunk_size: int | None = None) -> DiagonalGaussian:
        """Encode ``(N, C, H, W)`` frames ``chunk_size`` at a time (None: all at once)."""
        if chunk_size is None or chunk_size >= x.shape[0]:
            return self.encode(x)
        posteriors = [self.encode(chunk) for chunk in x.split(chunk_size)]
        return DiagonalGaussian(torch.cat([p.mean for p in posteriors]), torch.cat([p.logvar for p in posteriors]))

    def decode_frames(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Decode ``(N, embed_dim, h, w)`` latents ``chunk_size`` at a time (None: all at once).

        With the temporal decoder each chunk is decoded as one clip (no overlap between chunks)."""
        if chunk_size is None or chunk_size >= z.shape[0]:
            return self.decode(z)
        return torch.cat([self.decode(chunk) for chunk in z.split(chunk_size)])
