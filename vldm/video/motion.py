"""Optical-flow motion score, shared by evaluation and data curation.

Stable Video Diffusion (Blattmann et al., 2023) annotates clips with the mean magnitude of
dense optical flow and filters static ones. Here flow is OpenCV Farnebäck (2003) or DIS
(Kroeger et al., 2016) on grayscale frames resized to a fixed short side, and the mean
per-pixel magnitude is divided by that short side, so the score is "fraction of the frame
moved per frame step" and comparable across input resolutions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

FLOW_METHODS: tuple[str, ...] = ("farneback", "dis")

# cv2.calcOpticalFlowFarneback(prev, next, flow, pyr_scale, levels, winsize, iterations,
# poly_n, poly_sigma, flags): fixed so scores are reproducible.
FARNEBACK_PARAMS: dict[str, float | int] = dict(
    pyr_scale=0.5, levels=3, winsize=7, iterations=3, poly_n=5, poly_sigma=1.1, flags=0
)
# OpenCV's DIS rejects frames whose sides are both < 12 px; smaller frames are upsampled
# by an integer factor until the short side is at least this, and the flow is mapped back.
DIS_MIN_SIDE: int = 16


@dataclass(frozen=True)
class FlowProtocol:
    """How a motion score is measured.

    ``method``: ``"farneback"`` or ``"dis"`` (DIS medium preset).
    ``short_side``: frames are resized (aspect kept) so the short side has this many
    pixels before flow; ``None`` keeps the input size.
    ``frame_step``: flow is taken between frames ``i`` and ``i + frame_step``.
    """

    method: str = "farneback"
    short_side: int | None = 32
    frame_step: int = 1

    def __post_init__(self) -> None:
        if self.method not in FLOW_METHODS:
            raise ValueError(f"method must be one of {FLOW_METHODS}, got {self.method!r}")
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"short_side must be positive or None, got {self.short_side}")
        if self.frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {self.frame_step}")


def _gray(frame: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W, 3)`` RGB or ``(H, W)`` gray -> contiguous uint8 ``(H, W)``."""
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if frame.ndim == 2:
        return np.ascontiguousarray(frame)
    raise ValueError(f"expected an (H, W, 3) RGB or (H, W) frame, got shape {frame.shape}")


def _dis_flow(g0: np.ndarray, g1: np.ndarray) -> np.ndarray:
    h, w = g0.shape
    k = max(1, math.ceil(DIS_MIN_SIDE / min(h, w)))
    if k > 1:
        g0 = cv2.resize(g0, (w * k, h * k), interpolation=cv2.INTER_LINEAR)
        g1 = cv2.resize(g1, (w * k, h * k), interpolation=cv2.INTER_LINEAR)
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(g0, g1, None)
    if k > 1:
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_AREA) / k
    return flow


def flow_field(frame0: np.ndarray, frame1: np.ndarray, method: str = "farneback") -> np.ndarray:
    """Dense flow ``(H, W, 2)`` float32 (x, y) from ``frame0`` to ``frame1``.

    Frames are uint8 RGB ``(H, W, 3)`` (or gray ``(H, W)``). OpenCV convention:
    ``frame0[y, x] ~ frame1[y + flow[y, x, 1], x + flow[y, x, 0]]``. Farnebäck uses
    :data:`FARNEBACK_PARAMS`; DIS uses the medium preset, upsampling frames whose short side
    is below :data:`DIS_MIN_SIDE` (OpenCV's DIS needs a side >= 12).
    """
    if frame0.shape != frame1.shape:
        raise ValueError(f"frame shape mismatch: {frame0.shape} vs {frame1.shape}")
    if frame0.dtype != np.uint8 or frame1.dtype != np.uint8:
        raise ValueError(f"flow_field expects uint8 frames, got {frame0.dtype} and {frame1.dtype}")
    g0, g1 = _gray(frame0), _gray(frame1)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(g0, g1, None, **FARNEBACK_PARAMS)
    if method == "dis":
        return _dis_flow(g0, g1)
    raise ValueError(f"method must be one of {FLOW_METHODS}, got {method!r}")


def flow_warp(frame: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward-warp: ``out[y, x] = frame[y + flow[y, x, 1], x + flow[y, x, 0]]`` (bilinear, edge-replicated).

    With ``flow = flow_field(f0, f1)``, ``flow_warp(f1, flow)`` approximates ``f0``.
    """
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = gx + flow[..., 0].astype(np.float32)
    map_y = gy + flow[..., 1].astype(np.float32)
    return cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def to_uint8_video(video: Any) -> np.ndarray:
    """uint8 ``(T, H, W, 3)``; float ``(T, H, W, 3)`` in [0, 1]; torch ``(T, 3, H, W)`` in [-1, 1]."""
    if hasattr(video, "detach") and hasattr(video, "cpu"):  # torch.Tensor, without importing torch
        v = video.detach().cpu().float().numpy()
        if v.ndim != 4 or v.shape[1] != 3:
            raise ValueError(f"expected a (T, 3, H, W) tensor in [-1, 1], got shape {tuple(v.shape)}")
        v = (v.transpose(0, 2, 3, 1) + 1.0) * 0.5
    else:
        v = np.asarray(video)
    if v.ndim != 4 or v.shape[3] != 3:
        raise ValueError(f"expected a (T, H, W, 3) video, got shape {tuple(v.shape)}")
    if v.dtype == np.uint8:
        return v
    return np.round(np.clip(v.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _resize_short_side(gray: np.ndarray, short_side: int | None) -> np.ndarray:
    h, w = gray.shape
    if short_side is None or min(h, w) == short_side:
        return gray
    s = short_side / min(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(gray, size, interpolation=interp)


def mean_flow_magnitude(video: Any, protocol: FlowProtocol = FlowProtocol()) -> float:
    """SVD-style motion score: mean over frame pairs of the mean per-pixel flow magnitude,
    divided by the short side of the (resized) frames the flow was computed on.

    ``video``: uint8 ``(T, H, W, 3)`` RGB, float ``(T, H, W, 3)`` in [0, 1], or a torch
    tensor ``(T, 3, H, W)`` in [-1, 1]. Pairs are ``(i, i + frame_step)`` for every ``i``.
    Raises ValueError when there is no pair (``T < frame_step + 1``).
    """
    frames = to_uint8_video(video)
    t, step = frames.shape[0], protocol.frame_step
    if t < step + 1:
        raise ValueError(f"need at least {step + 1} frames for frame_step={step}, got {t}")
    grays = [_resize_short_side(_gray(f), protocol.short_side) for f in frames]
    flows = [flow_field(grays[i], grays[i + step], protocol.method) for i in range(t - step)]
    mags = [np.linalg.norm(f, axis=-1).mean() for f in flows]
    return float(np.mean(mags)) / float(min(grays[0].shape))
