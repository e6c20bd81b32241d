"""Generation from a trained latent diffusion model: image-to-video and text-to-image.

The sampling defaults follow the official SVD sampler (``sgm`` ``EulerEDMSampler`` with
``LinearPredictionGuider``): EDM sigmas, Euler without churn, initial noise scaled by
``sqrt(1 + sigma_max^2)``, per-frame guidance rising linearly; the unconditional pass zeroes the
image/text conditioning and keeps the vector conditioning. This is the seam the memory-planning
sampler plugs into: components in, tensors out, no files or configs here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vldm.conditioning.conditioner import Conditioner
from vldm.conditioning.i2v_inputs import expand_to_frames, i2v_inputs
from vldm.diffusion.denoiser import Denoiser
from vldm.diffusion.discretization import karras_sigmas
from vldm.diffusion.guidance import guide, linear_frame_scales
from vldm.diffusion.samplers import SAMPLERS


@dataclass
class SamplerConfig:
    """Sampler settings; the SVD-XT preset is 30 steps, guidance 1.5 -> 3.0, sigma_max 700."""

    name: str = "euler"
    num_steps: int = 25
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    min_guidance: float = 1.0
    max_guidance: float = 2.5
    decode_chunk_size: int | None = None
    progress: bool = False


UNCOND_ZERO_KEYS = ("cond_frames", "cond_frames_without_noise", "txt")


class LatentDiffusionSampler:
    """Holds the parts of a trained model needed to sample from it."""

    def __init__(self, network: nn.Module, denoiser: Denoiser, conditioner: Conditioner,
                 first_stage: nn.Module, scale_factor: float) -> None:
        self.network, self.denoiser, self.conditioner = network, denoiser, conditioner
        self.first_stage, self.scale_factor = first_stage, scale_factor

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def sample_latents(self, inputs: dict, shape: tuple[int, ...], num_frames: int, cfg: SamplerConfig,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents ``(b * t, c, h, w)`` for conditioning ``inputs`` of ``b`` samples."""
        cond = expand_to_frames(self.conditioner(inputs), num_frames)
        guided = not (cfg.min_guidance == 1.0 and cfg.max_guidance == 1.0)
        if guided:
            uncond = expand_to_frames(self.conditioner(inputs, force_zero=UNCOND_ZERO_KEYS), num_frames)
            both = {k: torch.cat([uncond[k], cond[k]]) for k in cond}
        scales = linear_frame_scales(num_frames, cfg.min_guidance, cfg.max_guidance)
        b = shape[0] // num_frames
        extra = {}
        if getattr(getattr(self.network, "config", None), "video", False):
            extra["image_only_indicator"] = torch.zeros(b * (2 if guided else 1), num_frames, device=self.device)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            if not guided:
                s = sigma.expand(x.shape[0])
                return self.denoiser(self.network, x, s, cond, num_frames=num_frames, **extra)
            s = sigma.expand(2 * x.shape[0])
            out_u, out_c = self.denoiser(self.network, torch.cat([x, x]), s, both, num_frames=num_frames,
                                         **extra).chunk(2)
            return guide(out_u, out_c, scales, num_frames)

        sigmas = karras_sigmas(cfg.num_steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).to(self.device)
        noise = torch.randn(shape, generator=generator).to(self.device)
        x = noise * torch.sqrt(1.0 + sigmas[0] ** 2)
        return SAMPLERS[cfg.name](denoise, x, sigmas, progress=cfg.progress)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Latents -> pixels in [-1, 1], ``chunk_size`` frames at a time."""
        z = z / self.scale_factor
        chunk = chunk_size or z.shape[0]
        return torch.cat([self.first_stage.decode(z[i:i + chunk]) for i in range(0, z.shape[0], chunk)]).clamp(-1, 1)

    @torch.no_grad()
    def image_to_video(self, image: torch.Tensor, num_frames: int, fps_id: int = 6, motion_bucket_id: int = 127,
                       cond_aug: float = 0.02, cfg: SamplerConfig = SamplerConfig(), seed: int = 0) -> torch.Tensor:
        """``image`` ``(b, 3, h, w)`` in [-1, 1] -> video ``(b, t, 3, h, w)`` in [-1, 1]."""
        generator = torch.Generator().manual_seed(seed)
        image = image.to(self.device)
        inputs = i2v_inputs(image, fps_id, motion_bucket_id, cond_aug, generator=generator)
        f = self.first_stage.downsample_factor
        c = self.network.config.out_channels
        shape = (image.shape[0] * num_frames, c, image.shape[2] // f, image.shape[3] // f)
        z = self.sample_latents(inputs, shape, num_frames, cfg, generator)
        video = self.decode(z, cfg.decode_chunk_size)
        return video.reshape(image.shape[0], num_frames, *video.shape[1:])

    @torch.no_grad()
    def text_to_image(self, captions: list[str], height: int, width: int, cfg: SamplerConfig = SamplerConfig(),
                      seed: int = 0) -> torch.Tensor:
        """Captions -> images ``(b, 3, h, w)`` in [-1, 1]."""
        generator = torch.Generator().manual_seed(seed)
        f = self.first_stage.downsample_factor
        shape = (len(captions), self.network.config.out_channels, height // f, width // f)
        z = self.sample_latents({"txt": list(captions)}, shape, 1, cfg, generator)
        return self.decode(z, cfg.decode_chunk_size)
