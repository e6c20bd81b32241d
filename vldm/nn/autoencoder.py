"""The KL autoencoder ("first stage") of Stable Diffusion, in the LDM / SGM parameter layout.

Matches ``sgm.modules.diffusionmodules.model.Encoder`` / ``Decoder``,
``sgm.modules.distributions.distributions.DiagonalGaussianDistribution`` and the
``AutoencoderKL`` of ``sgm.models.autoencoder``: the state-dict keys equal the released SD
checkpoints' ``first_stage_model.*`` keys without that prefix. Images are in [-1, 1]; the
latent scale factor (0.18215) is applied by the diffusion module, not here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vldm.nn.autoencoder_coders import Decoder, Encoder
from vldm.nn.temporal_decoder import TemporalDecoder


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
