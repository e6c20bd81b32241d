"""Classifier-free guidance (Ho & Salimans, 2022), with SVD's per-frame linear scale."""

from __future__ import annotations

import torch


def linear_frame_scales(num_frames: int, min_scale: float, max_scale: float) -> torch.Tensor:
    """Guidance scale for each frame, rising linearly from ``min_scale`` (frame 0) to ``max_scale``."""
    return torch.linspace(min_scale, max_scale, num_frames)


def guide(x_uncond: torch.Tensor, x_cond: torch.Tensor, frame_scales: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``x_u + s_t (x_c - x_u)`` on ``(b * t, ...)`` tensors with a scale per frame ``t``."""
    scale = frame_scales.to(x_cond).repeat(x_cond.shape[0] // num_frames)
    scale = scale.reshape(-1, *([1] * (x_cond.ndim - 1)))
    return x_uncond + scale * (x_cond - x_uncond)
