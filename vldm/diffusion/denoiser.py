"""Denoiser preconditioning ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)``.

Karras et al., 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models",
EDM, Table 1). Scalings match ``sgm.modules.diffusionmodules.denoiser_scaling``:
``EDMScaling`` (x0 target), ``VScalingWithEDMcNoise`` (SVD: v-prediction, ``c_noise = ln(sigma)/4``),
and the discrete-time ``EpsScaling`` / ``VScaling`` of SD 1.x / 2.x, whose ``c_noise`` is the
index of the nearest of 1000 DDPM noise levels (:class:`DiscreteDenoiser`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from vldm.diffusion.discretization import ddpm_sigmas

Scalings = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class EDMScaling:
    """x0-prediction with EDM preconditioning."""

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        return c_skip, c_out, c_in, 0.25 * sigma.log()


class VScalingWithEDMcNoise:
    """v-prediction with EDM's noise conditioning (Stable Video Diffusion)."""

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0).sqrt()
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        return c_skip, c_out, c_in, 0.25 * sigma.log()


class EpsScaling:
    """epsilon-prediction (SD 1.x, SD 2.x base); ``c_noise`` is sigma, discretised later."""

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1.0).sqrt(), sigma.clone()


class VScaling:
    """v-prediction in discrete time (SD 2.x 768-v); ``c_noise`` is sigma, discretised later."""

    def __call__(self, sigma: torch.Tensor) -> Scalings:
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / (sigma**2 + 1.0).sqrt()
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        return c_skip, c_out, c_in, sigma.clone()


Network = Callable[..., torch.Tensor]


class Denoiser(nn.Module):
    """Wraps a network ``F`` into the denoiser ``D``; ``concat`` is appended to ``c_in x``
    along channels (SVD's conditioning-frame latent, not scaled)."""

    def __init__(self, scaling: Callable[[torch.Tensor], Scalings]) -> None:
        super().__init__()
        self.scaling = scaling

    def noise_condition(self, c_noise: torch.Tensor) -> torch.Tensor:
        return c_noise

    def forward(self, network: Network, x: torch.Tensor, sigma: torch.Tensor,
                cond: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
        sigma = sigma.to(x.dtype)
        c_skip, c_out, c_in, c_noise = (s.reshape(-1, *([1] * (x.ndim - 1))) for s in self.scaling(sigma))
        net_in = c_in * x
        if "concat" in cond:
            net_in = torch.cat([net_in, cond["concat"].to(x.dtype)], dim=1)
        out = network(net_in, self.noise_condition(c_noise.reshape(-1)), context=cond.get("crossattn"),
                      y=cond.get("vector"), **kwargs)
        return c_skip * x + c_out * out


class DiscreteDenoiser(Denoiser):
    """A denoiser over the 1000 DDPM noise levels of SD (``c_noise`` = nearest level's index)."""

    def __init__(self, scaling: Callable[[torch.Tensor], Scalings], num_timesteps: int = 1000,
                 linear_start: float = 0.00085, linear_end: float = 0.012) -> None:
        super().__init__(scaling)
        self.schedule = (num_timesteps, linear_start, linear_end)
        self.register_buffer("sigmas", ddpm_sigmas(*self.schedule), persistent=False)

    def init_buffers(self, device: torch.device | str) -> None:
        """Recompute the sigma ladder (not in the state dict) after a meta-device build."""
        self.sigmas = ddpm_sigmas(*self.schedule).to(device)

    def sigma_to_idx(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma.reshape(-1, 1) - self.sigmas.to(sigma.device)[None]).abs().argmin(dim=1)

    def idx_to_sigma(self, idx: torch.Tensor) -> torch.Tensor:
        return self.sigmas.to(idx.device)[idx]

    def noise_condition(self, c_noise: torch.Tensor) -> torch.Tensor:
        return self.sigma_to_idx(c_noise.float()).to(c_noise.dtype)
