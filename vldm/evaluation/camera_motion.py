"""Global camera motion of a clip from optical flow: pan left / right, zoom in / out, or static.

Dense Farnebäck (2003) flow (:func:`vldm.video.motion.flow_field`) between consecutive frames, a
``margin`` of border pixels left out (flow there sees content entering the frame). Per pair, over the
remaining pixels:

- ``pan``: the mean flow x, px/frame (content moving right, > 0, is the camera panning **left**);
- ``zoom``: the divergence rate, the least-squares ``d`` of ``flow ~ d * (p - centre)``: the relative
  growth per frame (> 0 zoom in);
- ``magnitude``: the mean flow length, px/frame.

Each is averaged over the pairs. :func:`classify_camera_motion`: ``static`` when the magnitude is below
:data:`STATIC_MAX`; otherwise a zoom when the displacement the divergence explains at the mean radius
exceeds the pan's, else a pan (conventions of :mod:`vldm.data.toy_camera`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vldm.video.motion import flow_field, to_uint8_video

STATIC_MAX: float = 0.2  # px/frame of mean flow magnitude below which the camera reads as still
MARGIN: int = 2


@dataclass(frozen=True)
class CameraMotionReading:
    """Mean flow x (px/frame), divergence rate (per frame), mean magnitude (px/frame), the motion read."""

    pan: float
    zoom: float
    magnitude: float
    motion: str


def _pair_features(flow: np.ndarray, margin: int) -> tuple[float, float, float, float]:
    h, w = flow.shape[:2]
    f = flow[margin:h - margin, margin:w - margin].astype(np.float64)
    ys, xs = np.mgrid[margin:h - margin, margin:w - margin].astype(np.float64)
    dx, dy = xs - (w - 1) / 2, ys - (h - 1) / 2
    r2 = dx * dx + dy * dy
    zoom = float((f[..., 0] * dx + f[..., 1] * dy).sum() / r2.sum())
    return float(f[..., 0].mean()), zoom, float(np.linalg.norm(f, axis=-1).mean()), float(np.sqrt(r2).mean())


def read_camera_motion(video: Any, margin: int = MARGIN) -> CameraMotionReading:
    """Measure and classify a clip's global camera motion (see the module doc).

    ``video``: uint8 ``(T, H, W, 3)`` RGB, float ``(T, H, W, 3)`` in [0, 1], or a torch ``(T, 3, H, W)``
    tensor in [-1, 1]; at least two frames, each side larger than ``2 * margin + 4``.
    """
    frames = to_uint8_video(video)
    t, h, w = frames.shape[:3]
    if t < 2:
        raise ValueError(f"camera motion needs at least 2 frames, got {t}")
    if min(h, w) <= 2 * margin + 4:
        raise ValueError(f"frames of {h}x{w} px are too small for a margin of {margin} px")
    feats = np.array([_pair_features(flow_field(frames[i], frames[i + 1], "farneback"), margin) for i in range(t - 1)])
    pan, zoom, magnitude, radius = (float(v) for v in feats.mean(axis=0))
    if magnitude < STATIC_MAX:
        motion = "static"
    elif abs(zoom) * radius > abs(pan):
        motion = "zoom_in" if zoom > 0 else "zoom_out"
    else:
        motion = "pan_left" if pan > 0 else "pan_right"
    return CameraMotionReading(pan, zoom, magnitude, motion)


def classify_camera_motion(video: Any) -> str:
    """The camera motion of ``video``: one of :data:`vldm.data.toy_camera.CAMERA_MOTIONS`."""
    return read_camera_motion(video).motion


def camera_motion_accuracy(videos: Sequence[Any], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy of :func:`classify_camera_motion` against ``labels``, with the confusion counts."""
    if len(videos) != len(labels) or not videos:
        raise ValueError(f"need as many labels as videos (at least one), got {len(videos)} videos, {len(labels)} labels")
    read = [classify_camera_motion(v) for v in videos]
    confusion = Counter(f"{want}->{got}" for want, got in zip(labels, read))
    correct = sum(want == got for want, got in zip(labels, read))
    return {"accuracy": correct / len(labels), "count": len(labels), "confusion": dict(sorted(confusion.items()))}
