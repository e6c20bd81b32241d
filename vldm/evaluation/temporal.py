"""Weight-free per-video metrics: conditioning fidelity, motion, flicker, flow-warping error.

All take uint8 videos ``(n, t, h, w, 3)`` and return per-video numpy arrays ``(n,)`` (or a dict
of them); averaging and protocol bookkeeping are the caller's.

- :func:`conditioning_fidelity`: PSNR / SSIM (Wang et al., 2004) of frame 0 against the
  conditioning image (:mod:`vldm.evaluation.fidelity`).
- :func:`motion_scores`: data curation's motion score (SVD, Blattmann et al., 2023): frames
  sampled at 2 fps exactly as ``data_curation.scorers.motion.sample_indices``, then
  :func:`vldm.video.motion.mean_flow_magnitude` with the curation default flow protocol
  (DIS, short side 32) -- the same numbers as ``MotionScorer`` (a test checks it).
- :func:`motion_distance`: generated vs reference motion-score distributions.
- :func:`flicker`: temporal high-frequency energy of low-passed luminance (see its doc).
- :func:`warping_error`: flow-warping error (Lai et al., 2018).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from vldm.evaluation.fidelity import psnr, ssim
from vldm.video.motion import FlowProtocol, flow_field, flow_warp, mean_flow_magnitude

PSNR_CAP_DB = 100.0          # identical images: +inf is stored as this (JSON has no inf)
CURATION_SAMPLE_FPS = 2.0    # data_curation's MotionScorer default
CURATION_FLOW = FlowProtocol(method="dis", short_side=32, frame_step=1)  # MotionScorer defaults
FLICKER_GRID = 4


def _videos(videos: np.ndarray, min_frames: int = 1) -> np.ndarray:
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"expected uint8 videos (n, t, h, w, 3), got shape {videos.shape}")
    if videos.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels 0..255, got {videos.dtype}")
    if videos.shape[1] < min_frames:
        raise ValueError(f"need at least {min_frames} frames per video, got {videos.shape[1]}")
    return videos


def conditioning_fidelity(videos: np.ndarray, cond_images: np.ndarray) -> dict[str, np.ndarray]:
    """``{"psnr": (n,), "ssim": (n,)}`` of each video's frame 0 vs its conditioning image.

    ``cond_images``: uint8 ``(n, h, w, 3)`` at the video's resolution. PSNR in dB (data range
    255), capped at :data:`PSNR_CAP_DB` (identical frames). SSIM needs ``h, w >= 11``.
    """
    videos = _videos(videos)
    cond = np.asarray(cond_images)
    if cond.ndim != 4 or cond.shape[-1] != 3 or cond.dtype != np.uint8:
        raise ValueError(f"cond_images must be uint8 (n, h, w, 3), got {cond.dtype} {cond.shape}")
    if cond.shape[0] != videos.shape[0]:
        raise ValueError(f"{videos.shape[0]} videos but {cond.shape[0]} conditioning images")
    if cond.shape[1:] != videos.shape[2:]:
        raise ValueError(f"resolution mismatch: videos are {videos.shape[2]}x{videos.shape[3]}, conditioning "
                         f"images {cond.shape[1]}x{cond.shape[2]}; resize the images to the generated resolution")
    p = [min(psnr(v[0].astype(np.float64), c.astype(np.float64), 255.0), PSNR_CAP_DB) for v, c in zip(videos, cond)]
    s = [ssim(v[0].astype(np.float64), c.astype(np.float64), 255.0) for v, c in zip(videos, cond)]
    return {"psnr": np.asarray(p, dtype=np.float64), "ssim": np.asarray(s, dtype=np.float64)}


def curation_sample_indices(num_frames: int, fps: float, sample_fps: float = CURATION_SAMPLE_FPS) -> list[int]:
    """Frame indices every ``round(fps / sample_fps)`` frames, as data curation samples them
    (``data_curation.scorers.motion.sample_indices``; a test holds the two equal). The step
    shrinks to ``num_frames - 1`` for short clips; fewer than 2 frames give ``[]``."""
    if num_frames < 2:
        return []
    step = max(1, round(fps / sample_fps)) if fps > 0 else 1
    step = min(step, num_frames - 1)
    return list(range(0, num_frames, step))


def motion_scores(videos: np.ndarray, fps: float | Sequence[float], protocol: FlowProtocol = CURATION_FLOW,
                  sample_fps: float = CURATION_SAMPLE_FPS) -> np.ndarray:
    """``(n,)`` curation motion scores: frames at ``sample_fps`` then ``mean_flow_magnitude``.

    ``fps``: the videos' frame rate (one number, or one per video). The score is the fraction
    of the (resized) frame's short side moved per sampled step.
    """
    videos = _videos(videos, min_frames=2)
    rates = np.broadcast_to(np.asarray(fps, dtype=np.float64), (videos.shape[0],))
    out = []
    for v, r in zip(videos, rates):
        idx = curation_sample_indices(v.shape[0], float(r), sample_fps)
        out.append(mean_flow_magnitude(v[idx], protocol))
    return np.asarray(out, dtype=np.float64)


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """1-Wasserstein distance between two empirical 1-D distributions: ``integral |F_a - F_b|``."""
    a = np.sort(np.asarray(a, dtype=np.float64).ravel())
    b = np.sort(np.asarray(b, dtype=np.float64).ravel())
    if a.size == 0 or b.size == 0:
        raise ValueError("wasserstein_1d needs two non-empty samples")
    grid = np.concatenate([a, b])
    grid.sort(kind="mergesort")
    widths = np.diff(grid)
    cdf_a = np.searchsorted(a, grid[:-1], side="right") / a.size
    cdf_b = np.searchsorted(b, grid[:-1], side="right") / b.size
    return float(np.sum(np.abs(cdf_a - cdf_b) * widths))


def motion_distance(gen_scores: np.ndarray, ref_scores: np.ndarray) -> dict[str, float]:
    """``{"ratio": mean(gen) / mean(ref), "wasserstein": W1(gen, ref)}`` of motion scores.

    ``ratio`` is ``nan`` when the reference mean is 0. 1 and 0 are "as the reference".
    """
    gen = np.asarray(gen_scores, dtype=np.float64)
    ref = np.asarray(ref_scores, dtype=np.float64)
    ref_mean = float(ref.mean()) if ref.size else float("nan")
    ratio = float(gen.mean()) / ref_mean if ref.size and gen.size and ref_mean != 0 else float("nan")
    return {"ratio": ratio, "wasserstein": wasserstein_1d(gen, ref)}


def _luma(frames: np.ndarray) -> np.ndarray:
    """uint8 ``(t, h, w, 3)`` -> float64 ``(t, h, w)`` Rec. 601 luma, 0..255."""
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def flicker(videos: np.ndarray, grid: int = FLICKER_GRID) -> np.ndarray:
    """``(n,)`` flicker in grey levels (0..255).

    Each frame's luma is low-passed to a ``grid x grid`` map of block means; flicker is the mean
    absolute second temporal difference of those block means, divided by 4:
    ``mean |L[t+1] - 2 L[t] + L[t-1]| / 4``. A brightness alternating by ``+-a`` scores ``a``;
    steady motion and linear fades (first-order changes) score ~0, so it measures the
    high-frequency temporal brightness instability that flow-based errors miss -- the quantity
    of "temporal flickering" in Bonneel et al. (2015) and VBench (Huang et al., 2024), on
    coarse luminance rather than raw pixels so texture motion does not count. Needs ``t >= 3``.
    """
    videos = _videos(videos, min_frames=3)
    out = []
    for v in videos:
        y = _luma(v)
        t, h, w = y.shape
        if h < grid or w < grid:
            raise ValueError(f"frames of {h}x{w} are smaller than the flicker grid {grid}")
        blocks = np.stack([cv2.resize(f, (grid, grid), interpolation=cv2.INTER_AREA) for f in y])
        second = blocks[2:] - 2.0 * blocks[1:-1] + blocks[:-2]
        out.append(np.abs(second).mean() / 4.0)
    return np.asarray(out, dtype=np.float64)


def occlusion_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """Non-occluded pixels of frame t by forward-backward consistency (Sundaram et al., 2010;
    Ruder et al., 2016, as Lai et al., 2018): ``|f + b~|^2 < 0.01 (|f|^2 + |b~|^2) + 0.5`` with
    ``b~ = b(x + f(x))``, and ``x + f(x)`` inside the frame. Returns float32 ``(h, w)`` 0/1."""
    h, w = forward.shape[:2]
    b_warped = flow_warp(backward, forward)
    lhs = np.sum((forward + b_warped) ** 2, axis=-1)
    rhs = 0.01 * (np.sum(forward**2, axis=-1) + np.sum(b_warped**2, axis=-1)) + 0.5
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    tx, ty = gx + forward[..., 0], gy + forward[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return ((lhs < rhs) & inside).astype(np.float32)


def warping_error(videos: np.ndarray, method: str = "dis") -> np.ndarray:
    """``(n,)`` flow-warping error (Lai et al., 2018, Eq. 8), RGB in [0, 1].

    For each pair ``(t, t+1)``: flow ``f`` from ``t`` to ``t+1`` and ``b`` back
    (:func:`flow_field`, ``method``), ``t+1`` warped back to ``t`` with ``f``, non-occlusion mask
    ``M`` (:func:`occlusion_mask`); ``E_t = sum M ||V_t - warp(V_{t+1})||^2 / sum M`` (squared L2
    over RGB per pixel, as the paper), averaged over pairs. Lai et al. compute flow on the input
    video; without one, flow is computed on the generated video itself, so this measures
    temporal consistency along the video's own motion (a frame-shuffled video scores high).
    """
    videos = _videos(videos, min_frames=2)
    out = []
    for v in videos:
        errs = []
        for f0, f1 in zip(v[:-1], v[1:]):
            fwd = flow_field(f0, f1, method)
            bwd = flow_field(f1, f0, method)
            mask = occlusion_mask(fwd, bwd)
            warped = flow_warp(f1, fwd).astype(np.float64) / 255.0
            sq = np.sum((f0.astype(np.float64) / 255.0 - warped) ** 2, axis=-1)
            total = float(mask.sum())
            errs.append(float((sq * mask).sum()) / total if total > 0 else float(sq.mean()))
        out.append(float(np.mean(errs)))
    return np.asarray(out, dtype=np.float64)
