"""Motion scorer: mean dense optical-flow magnitude of a clip sampled at 2 fps, and a ``static`` flag.

Stable Video Diffusion (Blattmann et al., 2023, Sec. 3.1 and App. E.2) annotates every clip with
dense optical flow computed at 2 fps and removes clips whose average flow magnitude is low ("static
scenes"). Here the score is exactly the one the evaluation uses, :func:`vldm.video.motion.
mean_flow_magnitude`: mean per-pixel flow magnitude on grayscale frames resized to ``short_side``,
divided by that short side, averaged over the sampled steps. It reads as "fraction of the frame
short side moved per sampled step" (per 0.5 s at ``sample_fps=2``), independent of resolution.

``static_threshold`` (default ``1e-3``) was chosen on the toy generator's clips (``vldm.data.toy``,
sizes 32/64/128, 8-48 frames at 8-24 fps, raw and through H.264 at CRF 10-30): static clips score
at most ~5e-4 (exactly 0 with DIS on identical frames), moving ones at least ~1.5e-3 (DIS) /
7e-3 (Farnebäck). Beware: on a flat background with per-frame sensor-like noise (sigma >= 1 grey
level), DIS reports ~0.02 for a static scene (Farnebäck ~5e-4), so on grainy footage Farnebäck (the
paper's option) separates static scenes far better.
"""

from __future__ import annotations

from typing import Any

from data_curation.records import Clip, Score
from vldm.video.motion import FLOW_METHODS, FlowProtocol, mean_flow_magnitude


def sample_indices(num_frames: int, fps: float, sample_fps: float) -> list[int]:
    """Frame indices taken at ``sample_fps``: every ``round(fps / sample_fps)``-th frame.

    When that gives fewer than 2 frames (a clip shorter than one sampling step) the step shrinks
    to ``num_frames - 1`` (first and last frame; consecutive frames for a 2-frame clip). Fewer
    than 2 frames: an empty list.
    """
    if num_frames < 2:
        return []
    step = max(1, round(fps / sample_fps)) if fps > 0 else 1
    step = min(step, num_frames - 1)
    return list(range(0, num_frames, step))


class MotionScorer:
    """``{"motion_score": float, "static": bool}`` per clip (both ``None`` for a 1-frame clip).

    ``method``: ``"dis"`` (DIS medium preset, default) or ``"farneback"`` (the paper's choice).
    ``sample_fps``: frames are taken every ``round(fps / sample_fps)`` source frames.
    ``short_side``: flow is computed on frames resized to this short side (16-64 px is plenty).
    ``static_threshold``: ``static`` is ``motion_score < static_threshold`` (see the module doc).
    """

    name = "motion"

    def __init__(self, method: str = "dis", sample_fps: float = 2.0, short_side: int = 32,
                 static_threshold: float = 1e-3) -> None:
        if method not in FLOW_METHODS:
            raise ValueError(f"motion method must be one of {FLOW_METHODS}, got {method!r}")
        if sample_fps <= 0:
            raise ValueError(f"sample_fps must be positive, got {sample_fps}")
        if short_side < 8:
            raise ValueError(f"short_side must be >= 8 px, got {short_side}")
        if static_threshold < 0:
            raise ValueError(f"static_threshold must be >= 0, got {static_threshold}")
        self.method = method
        self.sample_fps = float(sample_fps)
        self.short_side = int(short_side)
        self.static_threshold = float(static_threshold)
        self.protocol = FlowProtocol(method=method, short_side=self.short_side, frame_step=1)

    @property
    def available(self) -> bool:
        return True

    @property
    def unavailable_reason(self) -> str:
        return ""

    def score(self, clip: Clip) -> dict[str, Score]:
        """Motion of ``clip.frames`` sampled at ``sample_fps`` (see :func:`sample_indices`)."""
        idx = sample_indices(len(clip.frames), clip.fps, self.sample_fps)
        if len(idx) < 2:
            return {"motion_score": None, "static": None}
        value = mean_flow_magnitude(clip.frames[idx], self.protocol)
        return {"motion_score": float(value), "static": bool(value < self.static_threshold)}

    def __repr__(self) -> str:
        return (f"MotionScorer(method={self.method!r}, sample_fps={self.sample_fps}, "
                f"short_side={self.short_side}, static_threshold={self.static_threshold})")

    def config(self) -> dict[str, Any]:
        """The constructor arguments (for the report / manifest metadata)."""
        return {"method": self.method, "sample_fps": self.sample_fps, "short_side": self.short_side,
                "static_threshold": self.static_threshold}


def check_bucket_scale(full_scale: float) -> float:
    """``full_scale`` as a float, or ``ValueError`` unless it is positive (``motion_bucket_scale``)."""
    value = float(full_scale)
    if not value > 0:
        raise ValueError(f"motion_bucket_scale must be positive, got {full_scale}")
    return value


def motion_bucket_id(motion_score: float | None, full_scale: float) -> int | None:
    """SVD's ``motion_bucket_id`` (0..255) of a clip from its ``motion_score``: linear, clamped.

    ``round(255 * motion_score / full_scale)`` clamped to [0, 255]: 0 for a still clip, 255 from
    ``full_scale`` on (a mean flow of that fraction of the short side per 0.5 s). SVD conditions on
    a motion bucket derived from optical flow; this linear map of the same flow score is monotone,
    so a higher bucket at sampling asks for more motion. None when the clip has no score.
    """
    full_scale = check_bucket_scale(full_scale)
    if motion_score is None or motion_score != motion_score:  # None or NaN
        return None
    return int(min(255, max(0, round(255.0 * float(motion_score) / full_scale))))
