"""Per-noise-level loss weights lambda(sigma) on ``||D(x; sigma) - x0||^2``."""

from __future__ import annotations

import torch


class EDMWeighting:
    """(sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 (Karras et al., 2022, Table 1).

    With ``sigma_data = 1`` and v-scaling this is unit weight on the network's v output.
    """

    def __init__(self, sigma_data: float = 0.5) -> None:
        self.sigma_data = sigma_data

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


class EpsWeighting:
    """sigma^-2: the plain epsilon-MSE of DDPM expressed on x0."""

    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma**-2.0


class UnitWeighting:
    def __call__(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(sigma)
