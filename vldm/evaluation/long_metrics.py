"""Long clips stitched from windows: colour drift, seam jump and motion continuation.

- colour drift: CIE76 Lab ΔE (``cv2`` Lab of sRGB) between the mean of the first and of the last
  ``edge`` frames, averaged over background pixels: the ``background_fraction`` of pixels that
  changed least (the moving foreground changes most; a toy shape covers under a tenth of a frame);
- seam jump: mean frame-to-frame change (mean absolute RGB difference, 0..255) across window
  boundaries over the median change between frames inside windows, pooled over clips (1: a seam
  is an ordinary step; a hard cut is many times that);
- motion continuation: the fraction of later windows whose mean optical flow (Farnebäck, the
  mean vector over pixels and frame pairs) points within ``max_angle`` degrees of the first window's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vldm.video.motion import flow_field


@dataclass(frozen=True)
class LongScores:
    """The three long-clip figures over a set of clips (see the module doc)."""

    num_clips: int
    drift_delta_e: float
    seam_jump: float
    continuation: float

    def as_dict(self) -> dict[str, float]:
        return {"num_clips": self.num_clips, "drift_delta_e": self.drift_delta_e, "seam_jump": self.seam_jump,
                "continuation": self.continuation}


def _check(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"expected a uint8 clip (t, h, w, 3), got {video.dtype} {video.shape}")
    return video


def _lab(frames: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(f.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB) for f in frames])


def colour_drift(video: np.ndarray, edge: int = 3, background_fraction: float = 0.75) -> float:
    """Mean Lab ΔE of the background between the first and the last ``edge`` frames of ``video``."""
    video = _check(video)
    if video.shape[0] < 2 * edge:
        raise ValueError(f"colour drift compares the first and last {edge} frames: need at least {2 * edge}, "
                         f"got {video.shape[0]}")
    if not 0 < background_fraction <= 1:
        raise ValueError(f"background_fraction must be in (0, 1], got {background_fraction}")
    lab = _lab(video)
    delta = np.linalg.norm(lab[:edge].mean(0) - lab[-edge:].mean(0), axis=-1).ravel()
    keep = max(1, int(round(background_fraction * delta.size)))
    return float(np.sort(delta)[:keep].mean())


def frame_changes(video: np.ndarray) -> np.ndarray:
    """Mean absolute RGB difference (0..255) between each frame and the next: ``t - 1`` values."""
    video = _check(video).astype(np.float32)
    return np.abs(np.diff(video, axis=0)).mean(axis=(1, 2, 3))


def seam_jump(videos: Sequence[np.ndarray], boundaries: Sequence[int]) -> float:
    """Mean change into each boundary frame (``b - 1 -> b``) over the median change elsewhere, pooled over clips."""
    if not boundaries:
        raise ValueError("seam jump needs at least one window boundary (a clip of one window has no seam)")
    seams, inner = [], []
    for video in videos:
        changes = frame_changes(video)
        at = set(b - 1 for b in boundaries)
        if max(at) >= len(changes) or min(at) < 0:
            raise ValueError(f"boundaries {list(boundaries)} do not fit a clip of {len(changes) + 1} frames")
        seams += [changes[i] for i in sorted(at)]
        inner += [c for i, c in enumerate(changes) if i not in at]
    median = float(np.median(inner))
    return float(np.mean(seams)) / median if median > 0 else float("inf")


def mean_flow(frames: np.ndarray) -> np.ndarray:
    """The mean flow vector ``(dx, dy)`` over pixels and consecutive frame pairs of ``frames``."""
    flows = [flow_field(a, b).reshape(-1, 2).mean(0) for a, b in zip(frames[:-1], frames[1:])]
    return np.mean(flows, axis=0)


def motion_continuation(videos: Sequence[np.ndarray], boundaries: Sequence[int], max_angle: float = 45.0) -> float:
    """The fraction of later windows (split at ``boundaries``) whose mean flow is within ``max_angle``
    degrees of the first window's; a window or first window without motion counts as not continued."""
    hits, total = 0, 0
    for video in videos:
        video = _check(video)
        edges = [0, *boundaries, video.shape[0]]
        flows = [mean_flow(video[a:b]) for a, b in zip(edges[:-1], edges[1:]) if b - a >= 2]
        first = flows[0]
        for f in flows[1:]:
            total += 1
            norm = np.linalg.norm(first) * np.linalg.norm(f)
            if norm > 0:
                hits += math.degrees(math.acos(float(np.clip(np.dot(first, f) / norm, -1.0, 1.0)))) <= max_angle
    if total == 0:
        raise ValueError("motion continuation needs clips of two or more windows of at least 2 frames each")
    return hits / total


def long_scores(videos: Sequence[np.ndarray], boundaries: Sequence[int]) -> LongScores:
    """Drift (mean over clips), seam jump and continuation of uint8 clips split into windows at ``boundaries``."""
    if not len(videos):
        raise ValueError("no clips to score")
    drift = float(np.mean([colour_drift(v) for v in videos]))
    return LongScores(len(videos), drift, seam_jump(videos, boundaries), motion_continuation(videos, boundaries))


def window_boundaries(spans: Sequence[tuple[int, int]]) -> list[int]:
    """The first frame each later window adds (where the previous one ended)."""
    return [end for _, end in spans[:-1]]
