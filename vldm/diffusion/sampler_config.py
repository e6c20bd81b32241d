"""A model's sampler preset: solver, noise schedule, guidance (the official SVD sampling settings by default)."""

from __future__ import annotations

from dataclasses import dataclass

from vldm.diffusion.discretization import SIGMA_SCHEDULES
from vldm.diffusion.samplers import SAMPLERS


@dataclass
class SamplerConfig:
    """Sampler settings; the SVD-XT preset is 30 steps, guidance 1.5 -> 3.0, sigma_max 700."""

    name: str = "euler"
    num_steps: int = 25
    schedule: str = "karras"  # karras (EDM, official) | exponential
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    min_guidance: float = 1.0
    max_guidance: float = 2.5
    decode_chunk_size: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.name!r}; choose from {sorted(SAMPLERS)}")
        if self.schedule not in SIGMA_SCHEDULES:
            raise ValueError(f"unknown sigma schedule {self.schedule!r}; choose from {sorted(SIGMA_SCHEDULES)}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be at least 1, got {self.num_steps}")
