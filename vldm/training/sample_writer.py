"""Validation samples as one mp4: each row is a reference clip beside its generated clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vldm.video.pixels import tensor_to_frames


def tile_rows(samples: torch.Tensor, references: torch.Tensor) -> np.ndarray:
    """``(b, t, 3, h, w)`` samples and references -> ``(t, b * h, 2 * w, 3)`` frames."""
    t = samples.shape[1]
    refs = references[:, :t] if references.shape[1] >= t else references[:, :1].expand(-1, t, -1, -1, -1)
    rows = torch.cat([refs.to(samples), samples], dim=-1)  # side by side
    grid = torch.cat(list(rows), dim=-2)  # stacked vertically
    return tensor_to_frames(grid)


def write_sample_grid(path: str | Path, samples: torch.Tensor, references: torch.Tensor, fps: int = 8) -> Path:
    from vldm.io.video_io import write_mp4

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, tile_rows(samples, references), fps=fps)
    return path
