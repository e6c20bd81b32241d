"""Deterministic synthetic camera-motion clips: a camera moving over a textured plane.

Every clip is a pure function of its seed and its motion. The plane is a smooth two-colour texture
(blurred random noise at two scales, blended between two named colours of clearly different grey
levels); the camera looks straight at
it and moves one of five ways (:data:`CAMERA_MOTIONS`). Conventions, in image coordinates (x right,
y down), as in cinematography:

- ``pan_left``: the camera turns left, so the picture's content moves **right** (flow x > 0);
- ``pan_right``: the content moves left (flow x < 0);
- ``zoom_in``: the view narrows by ``1 + rate`` per frame, the content grows away from the centre
  (positive divergence); ``zoom_out`` the reverse;
- ``static``: identical frames.

Pans move ``[min_pan, max_pan]`` px/frame; zooms change the scale by ``[min_zoom, max_zoom]`` per frame.
Frames are rendered at ``supersample`` x resolution and box-filtered down. ``python -m
vldm.jobs.toy_data --root data/toy_camera --camera`` writes them as webdataset shards, the motion in
each sample's json as ``"camera"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

CAMERA_MOTIONS = ("pan_left", "pan_right", "zoom_in", "zoom_out", "static")
CAMERA_WORDS = {"pan_left": "pans left", "pan_right": "pans right", "zoom_in": "zooms in",
                "zoom_out": "zooms out", "static": "stays still"}
TEXTURE_COLOURS: dict[str, tuple[int, int, int]] = {
    "orange": (235, 140, 40), "navy": (25, 35, 110), "white": (240, 240, 235), "forest green": (30, 110, 45),
    "crimson": (180, 25, 45), "gold": (230, 200, 60), "teal": (30, 140, 150), "charcoal": (45, 45, 50),
}
MIN_LUMA_CONTRAST: float = 60.0  # grey-level difference of a texture's two colours (flow is taken on grey)


def _luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


#: the texture colour pairs: every ordered pair whose grey levels differ by at least MIN_LUMA_CONTRAST
TEXTURE_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (a, b) for a in TEXTURE_COLOURS for b in TEXTURE_COLOURS
    if abs(_luma(TEXTURE_COLOURS[a]) - _luma(TEXTURE_COLOURS[b])) >= MIN_LUMA_CONTRAST)


@dataclass(frozen=True)
class CameraClipConfig:
    """Sizes and ranges of the synthetic camera clips (all JSON-serialisable)."""

    size: int = 32
    num_frames: int = 8
    fps: int = 8
    min_pan: float = 1.0
    max_pan: float = 2.5
    min_zoom: float = 0.04
    max_zoom: float = 0.08
    supersample: int = 4
    crf: int = 10

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size must be even and >= 16, got {self.size}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if not 0 < self.min_pan <= self.max_pan:
            raise ValueError(f"need 0 < min_pan <= max_pan, got {self.min_pan}, {self.max_pan}")
        if not 0 < self.min_zoom <= self.max_zoom < 0.5:
            raise ValueError(f"need 0 < min_zoom <= max_zoom < 0.5, got {self.min_zoom}, {self.max_zoom}")

    @property
    def canvas(self) -> int:
        """Side of the texture in output pixels: room for the longest pan and the widest zoom-out view."""
        pan = self.size + 2 * (self.num_frames - 1) * self.max_pan
        zoom = self.size * (1 + self.max_zoom) ** (self.num_frames - 1)
        return int(np.ceil(max(pan, zoom))) + 8


def _texture(rng: np.random.Generator, cfg: CameraClipConfig, c0: str, c1: str) -> np.ndarray:
    """A smooth two-colour texture ``(S, S, 3)`` float32 at ``supersample`` x the canvas resolution."""
    side = cfg.canvas * cfg.supersample
    mix = np.zeros((side, side), np.float32)
    for sigma, weight in ((1.6, 0.6), (4.0, 1.0)):  # in output pixels
        noise = rng.standard_normal((side, side)).astype(np.float32)
        blurred = cv2.GaussianBlur(noise, (0, 0), sigma * cfg.supersample, borderType=cv2.BORDER_REFLECT)
        mix += weight * blurred / max(float(blurred.std()), 1e-6)
    mix = 1.0 / (1.0 + np.exp(-1.5 * mix / float(mix.std())))  # contrast, in (0, 1)
    a, b = (np.array(TEXTURE_COLOURS[c], np.float32) for c in (c0, c1))
    return a * (1.0 - mix[..., None]) + b * mix[..., None]


def _view(motion: str, rate: float, t: int) -> tuple[float, float]:
    """The view's scale (canvas px per output px) and x offset (output px) at frame ``t``."""
    if motion == "zoom_in":
        return (1.0 + rate) ** -t, 0.0
    if motion == "zoom_out":
        return (1.0 + rate) ** t, 0.0
    if motion == "pan_left":  # the view moves left over the plane: content moves right in the frame
        return 1.0, -rate * t
    if motion == "pan_right":
        return 1.0, rate * t
    return 1.0, 0.0


def _render(texture: np.ndarray, motion: str, rate: float, cfg: CameraClipConfig) -> np.ndarray:
    ss, big = cfg.supersample, cfg.size * cfg.supersample
    centre = texture.shape[0] / 2  # continuous canvas coordinates, supersampled px
    frames = []
    for t in range(cfg.num_frames):
        scale, offset = _view(motion, rate, t)
        # supersampled output pixel index i -> continuous output coordinate (i + 0.5) / ss - size / 2
        # -> canvas coordinate centre + ss * (scale * that + offset) -> canvas pixel index (minus 0.5)
        a = scale
        bx = centre + ss * (scale * (0.5 / ss - cfg.size / 2) + offset) - 0.5
        by = centre + ss * (scale * (0.5 / ss - cfg.size / 2)) - 0.5
        warp = np.array([[a, 0.0, bx], [0.0, a, by]], np.float64)
        view = cv2.warpAffine(texture, warp, (big, big), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT)
        small = cv2.resize(view, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA)
        frames.append(np.clip(np.round(small), 0, 255).astype(np.uint8))
    return np.stack(frames)


def camera_caption(motion: str, colours: tuple[str, str]) -> str:
    """``"the camera pans left over an orange and navy texture"``."""
    article = "an" if colours[0][0] in "aeiou" else "a"
    return f"the camera {CAMERA_WORDS[motion]} over {article} {colours[0]} and {colours[1]} texture"


def generate_camera_clip(seed: int, motion: str, cfg: CameraClipConfig = CameraClipConfig()
                         ) -> tuple[np.ndarray, dict[str, Any]]:
    """Render one clip ``(T, H, W, 3)`` uint8 of ``motion`` and its JSON-serialisable metadata."""
    if motion not in CAMERA_MOTIONS:
        raise ValueError(f"camera motion must be one of {CAMERA_MOTIONS}, got {motion!r}")
    rng = np.random.default_rng(seed)
    colours = TEXTURE_PAIRS[int(rng.integers(len(TEXTURE_PAIRS)))]
    pan, zoom = float(rng.uniform(cfg.min_pan, cfg.max_pan)), float(rng.uniform(cfg.min_zoom, cfg.max_zoom))
    rate = {"pan_left": pan, "pan_right": pan, "zoom_in": zoom, "zoom_out": zoom}.get(motion, 0.0)
    frames = _render(_texture(rng, cfg, *colours), motion, rate, cfg)
    # mean displacement px/frame: a pan moves every pixel by its speed; a zoom moves a pixel by rate x its
    # distance from the centre (mean distance over a square of side L: about 0.383 L)
    speed = pan if motion.startswith("pan") else (zoom * 0.383 * cfg.size if motion.startswith("zoom") else 0.0)
    meta: dict[str, Any] = {
        "caption": camera_caption(motion, colours),
        "camera": motion,
        "texture": list(colours),
        "rate": round(rate, 6),
        "static": motion == "static",
        "fps": cfg.fps,
        "num_frames": cfg.num_frames,
        "motion_bucket_id": int(round(min(speed / cfg.max_pan, 1.0) * 200)),
        "seed": int(seed),
        "size": cfg.size,
    }
    return frames, meta
