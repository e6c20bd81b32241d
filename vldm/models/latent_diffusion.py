"""A latent diffusion model as a plain ``nn.Module``: SGM's ``DiffusionEngine`` without training.

The attribute names give the SGM key layout of the released SD 2.x / SVD files:
``model.diffusion_model.*`` (the UNet), ``first_stage_model.*`` (the autoencoder),
``conditioner.embedders.{i}.*``; ``scale_factor`` is in the state dict only when it was measured
(LDM's ``scale_by_std``), a fixed one (SD: 0.18215) is not. Sampling, evaluation and export use this
model; training wraps it (:class:`vldm.training.module.DiffusionModule`).
"""

from __future__ import annotations

import torch
from torch import nn

from vldm.conditioning.conditioner import Conditioner
from vldm.conditioning.scalar_embedders import ConditioningFrameEncoder
from vldm.diffusion.denoiser import Denoiser
from vldm.diffusion.sampler_config import SamplerConfig
from vldm.nn.unet import UNet


class DiffusionWrapper(nn.Module):
    """Holds the network as ``diffusion_model`` (the SGM name) and calls it."""

    def __init__(self, network: UNet) -> None:
        super().__init__()
        self.diffusion_model = network

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.diffusion_model(x, c_noise, **kwargs)


class LatentDiffusion(nn.Module):
    """Network, autoencoder, conditioner, denoiser and latent scale of one model (Rombach et al., 2022).

    ``image_to_video``: conditioned on a first frame (SVD) rather than on text (a video network without
    it is the text-to-video base model, see :attr:`task`); ``sampler``: the
    model's sampling preset; ``uncond_text``: guidance's text branch, ``zero`` (SGM) or the
    ``empty`` prompt (SD 2.x).
    """

    def __init__(self, network: UNet, first_stage: nn.Module, conditioner: Conditioner, denoiser: Denoiser,
                 scale_factor: float | None = 0.18215, image_to_video: bool = False,
                 sampler: SamplerConfig | dict | None = None, uncond_text: str = "zero") -> None:
        super().__init__()
        if uncond_text not in ("zero", "empty"):
            raise ValueError(f"uncond_text must be 'zero' or 'empty', got {uncond_text!r}")
        self.model = DiffusionWrapper(network)
        self.first_stage_model = first_stage.eval().requires_grad_(False)
        for embedder in conditioner.embedders:  # the conditioning frame uses the first stage unless given its own
            if isinstance(embedder, ConditioningFrameEncoder) and embedder.encoder is None:
                embedder.encoder = self.first_stage_model
        self.conditioner = conditioner.requires_grad_(False)
        self.denoiser = denoiser
        self.image_to_video, self.uncond_text = image_to_video, uncond_text
        self.sampler_cfg = sampler if isinstance(sampler, SamplerConfig) else SamplerConfig(**(sampler or {}))
        # None: measured from the first training batch and kept in the state dict; a fixed value is not saved
        self.scale_by_std = scale_factor is None
        self._fixed_scale = None if scale_factor is None else float(scale_factor)
        self.register_buffer("scale_factor", torch.tensor(-1.0 if scale_factor is None else float(scale_factor)),
                             persistent=self.scale_by_std)

    @property
    def network(self) -> UNet:
        return self.model.diffusion_model

    @property
    def task(self) -> str:
        """What the model generates from what: ``text_to_image`` (stage I), ``text_to_video`` (the SVD base
        model, stages II-III) or ``image_to_video``."""
        if self.image_to_video:
            return "image_to_video"
        return "text_to_video" if self.network.config.video else "text_to_image"

    def init_buffers(self, device: torch.device | str) -> None:
        """Recompute the buffers a state dict does not hold (the fixed latent scale) after a meta-device build."""
        if not self.scale_by_std:
            self.scale_factor = torch.tensor(self._fixed_scale, device=device)

    def train(self, mode: bool = True) -> "LatentDiffusion":
        super().train(mode)
        self.first_stage_model.eval()
        return self

    def scaled(self, z: torch.Tensor) -> torch.Tensor:
        """Autoencoder latents -> the diffusion model's latent space (``z * scale_factor``)."""
        if not self.scale_factor > 0:
            raise ValueError("scale_factor was never set: the model has not seen a training batch "
                             "(scale_factor: null measures it from the first one)")
        return z * self.scale_factor

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(n, 3, h, w)`` in [-1, 1] -> scaled latents, a sample of the autoencoder's posterior."""
        return self.scaled(self.first_stage_model.encode(pixels).sample(generator=generator))
