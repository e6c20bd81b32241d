"""Noise-level schedules: the DDPM ladder of SD and the sampling schedules (EDM/Karras, exponential)."""

from __future__ import annotations

import math
from typing import Callable

import torch


def ddpm_sigmas(num_timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> torch.Tensor:
    """Sigmas of the "scaled linear" DDPM schedule of LDM / SD, ascending (Ho et al., 2020)."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  append_zero: bool = True) -> torch.Tensor:
    """EDM schedule (Karras et al., 2022, Eq. 5), descending, with a trailing 0 by default."""
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.float()


def exponential_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                       append_zero: bool = True) -> torch.Tensor:
    """Uniform steps in log sigma (k-diffusion's ``get_sigmas_exponential``); ``rho`` is ignored."""
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), num_steps, dtype=torch.float64).exp()
    if append_zero:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.float()


SIGMA_SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {"karras": karras_sigmas, "exponential": exponential_sigmas}


def sigma_schedule(name: str, num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """A named descending schedule with a trailing 0 (``karras`` is the official SVD/EDM one)."""
    if name not in SIGMA_SCHEDULES:
        raise ValueError(f"unknown sigma schedule {name!r}; choose from {sorted(SIGMA_SCHEDULES)}")
    if num_steps < 1 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"need num_steps >= 1 and 0 < sigma_min < sigma_max, got {num_steps}, {sigma_min}, {sigma_max}")
    return SIGMA_SCHEDULES[name](num_steps, sigma_min, sigma_max, rho)
