"""The sampler for one run, placed and cast according to the memory plan (placeholder until the planner lands)."""

from __future__ import annotations

import torch

from vldm.sampling.pipeline import LatentDiffusionSampler, SamplerConfig


def lean_sampler(module, device: torch.device, dtype: torch.dtype, max_memory, num_frames: int, height: int,
                 width: int, cfg: SamplerConfig) -> tuple[LatentDiffusionSampler, object | None]:
    module.to(device)
    return module.sampler(use_ema=False), None
