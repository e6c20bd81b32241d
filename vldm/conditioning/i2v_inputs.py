"""The conditioning inputs of image-to-video, with the official SVD conventions.

``cond_frames_without_noise``: the first frame (for the CLIP image embedding);
``cond_frames``: the same frame plus ``cond_aug * N(0, I)`` in pixel space (for the concat
latent); ``fps_id`` = fps - 1; ``motion_bucket_id`` in [0, 255]; ``cond_aug`` also enters the
vector conditioning. Shared by training and sampling so both see the same inputs.
"""

from __future__ import annotations

import torch

from vldm.diffusion.noise import Generators, randn


def i2v_inputs(image: torch.Tensor, fps_id: torch.Tensor | int, motion_bucket_id: torch.Tensor | int,
               cond_aug: torch.Tensor | float, generator: Generators = None) -> dict[str, torch.Tensor]:
    """``image``: ``(b, 3, h, w)`` in [-1, 1]. Scalars broadcast to the batch. ``generator``: one, or one
    per image (:func:`vldm.diffusion.noise.randn`)."""
    b = image.shape[0]

    def per_sample(v: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
        v = torch.as_tensor(v, dtype=dtype, device=image.device)
        return v.expand(b).clone() if v.ndim == 0 else v.to(image.device, dtype)

    aug = per_sample(cond_aug, torch.float32)
    noise = randn(image.shape, generator, dtype=image.dtype).to(image.device)
    return {
        "cond_frames_without_noise": image,
        "cond_frames": image + aug.to(image.dtype).reshape(-1, 1, 1, 1) * noise,
        "fps_id": per_sample(fps_id, torch.float32),
        "motion_bucket_id": per_sample(motion_bucket_id, torch.float32),
        "cond_aug": aug,
    }


def expand_to_frames(cond: dict[str, torch.Tensor], num_frames: int) -> dict[str, torch.Tensor]:
    """Per-video conditioning ``(b, ...)`` -> per-frame ``(b * t, ...)`` (frames folded into batch)."""
    return {k: v.repeat_interleave(num_frames, dim=0) for k, v in cond.items()}


class LogNormalCondAug:
    """Training-time noise augmentation level: ``exp(N(mean, std^2))``, as in SVD's training."""

    def __init__(self, mean: float = -3.0, std: float = 0.5) -> None:
        self.mean, self.std = mean, std

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return (self.mean + self.std * torch.randn(n, generator=generator)).exp()
