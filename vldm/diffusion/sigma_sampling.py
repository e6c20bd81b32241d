"""Training-time noise-level distributions."""

from __future__ import annotations

import torch


class EDMSigmaSampler:
    """log sigma ~ N(p_mean, p_std^2) (Karras et al., 2022; SVD shifts p_mean up for video)."""

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        self.p_mean, self.p_std = p_mean, p_std

    def __call__(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        return (self.p_mean + self.p_std * torch.randn(n, generator=generator)).exp().to(device)


class DiscreteSigmaSampler:
    """A uniformly drawn level of the DDPM ladder (SD training)."""

    def __init__(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas

    def __call__(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        idx = torch.randint(0, len(self.sigmas), (n,), generator=generator)
        return self.sigmas[idx].to(device)
