"""The sampler for one clip size, placed, cast and chunked by the memory planner."""

from __future__ import annotations

import torch

from vldm.diffusion.sampler_config import SamplerConfig
from vldm.models.latent_diffusion import LatentDiffusion
from vldm.sampling.memory_plan import MemoryPlan, plan_for
from vldm.sampling.pipeline import LatentDiffusionSampler


def lean_sampler(model: LatentDiffusion, device: torch.device, dtype: torch.dtype, max_memory: str | int | None,
                 num_frames: int, height: int, width: int, cfg: SamplerConfig) -> tuple[LatentDiffusionSampler, MemoryPlan]:
    """A sampler whose plan fits ``max_memory`` (None: the device's free memory; no limit on CPU)."""
    guided = not (cfg.min_guidance == 1.0 and cfg.max_guidance == 1.0)
    plan = plan_for(model, max_memory, num_frames, height, width, guided=guided, device=device, dtype=dtype)
    sampler = LatentDiffusionSampler.from_model(model)
    sampler.apply_plan(plan, device)
    return sampler, plan
