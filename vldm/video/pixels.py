"""Pixels: uint8 frames and the model's [-1, 1] floats (``x = u / 127.5 - 1``, LDM/SGM's convention)."""

from __future__ import annotations

import numpy as np
import torch


def from_uint8(frames: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1], same layout; the one conversion every reader uses (bit for bit)."""
    return frames.float().div_(127.5).sub_(1.0)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8, same layout, rounded to nearest (exact inverse of :func:`from_uint8`)."""
    return ((pixels.detach().float().clamp(-1, 1) + 1.0) * 127.5).round_().to(torch.uint8)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [-1, 1]."""
    return from_uint8(torch.from_numpy(np.ascontiguousarray(frames))).movedim(-1, -3).contiguous()


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """``(..., 3, h, w)`` in [-1, 1] -> uint8 ``(..., h, w, 3)`` (numpy, on the CPU)."""
    return to_uint8(video.cpu()).movedim(-3, -1).numpy()
