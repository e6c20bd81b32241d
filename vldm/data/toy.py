"""Deterministic synthetic video data: one coloured shape moving over a dark background.

Every clip is a pure function of its seed. The shape's **colour fixes its direction of motion**,
so the first frame of a clip already tells where the shape will go (this makes image-to-video
well-posed on toy data)::

    red -> right     green -> up          blue -> left
    yellow -> down   magenta -> up-right  cyan -> down-left

Directions are unit vectors ``[dx, dy]`` in image coordinates (x right, y down). Speeds are drawn
from ``[min_speed, max_speed]`` px/frame (capped so the shape stays fully inside the frame for the
whole clip; there is no bouncing). ``motion_bucket_id = round(speed / max_speed * 200)``.

Clip kinds: ``clean`` (the above), ``static`` (same scene, speed 0, identical frames), ``text``
(the clean clip plus a static burned-in word) and ``cut`` (the clean clip until ``cut_frame``,
then a different scene). For one seed, all kinds share the same first scene. The ``light`` palette
draws the same scenes over light backgrounds instead, the ``warm`` palette over the dark red and dark
brown ones only (second looks for the same motion).

``python -m vldm.jobs.toy_data --root data/toy`` writes the clips as webdataset shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


KINDS = ("clean", "static", "text", "cut")
SHAPES = ("circle", "square", "triangle")
# colour name -> (RGB, unit direction [dx, dy] in image coordinates, direction words)
_D = 0.5**0.5
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[float, float], str]] = {
    "red": ((230, 40, 40), (1.0, 0.0), "right"),
    "green": ((40, 210, 60), (0.0, -1.0), "up"),
    "blue": ((60, 110, 255), (-1.0, 0.0), "left"),
    "yellow": ((245, 225, 40), (0.0, 1.0), "down"),
    "magenta": ((225, 50, 225), (_D, -_D), "up and to the right"),
    "cyan": ((40, 225, 235), (-_D, _D), "down and to the left"),
}
# darkish backgrounds, pairwise different by > 25 in at least one channel
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "dark blue": (20, 30, 95),
    "dark green": (20, 85, 35),
    "dark red": (95, 20, 25),
    "dark grey": (60, 60, 60),
    "black": (8, 8, 8),
    "dark purple": (70, 25, 100),
    "dark teal": (15, 80, 85),
    "dark brown": (90, 60, 25),
}
WORDS = ("SALE", "NEWS", "LIVE", "WOW", "TOP", "HOT", "BUY", "FREE", "LOL", "DEMO", "NEW", "OMG")
TEXT_COLOURS = {"white": (255, 255, 255), "yellow": (255, 230, 0)}
# light backgrounds (the "light" palette: the same scenes in a different look), pairwise different by > 25
LIGHT_BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "pale pink": (245, 200, 210),
    "pale green": (195, 235, 190),
    "light grey": (200, 200, 200),
    "cream": (245, 235, 200),
    "sky blue": (175, 210, 245),
    "lavender": (215, 195, 240),
}
# the "warm" palette: the dark backgrounds' red and brown only (a different look inside the colours the toy
# autoencoder, trained on the dark palette, reconstructs; it cannot reproduce the light palette)
WARM_BACKGROUNDS: dict[str, tuple[int, int, int]] = {k: BACKGROUNDS[k] for k in ("dark red", "dark brown")}
PALETTES: dict[str, dict[str, tuple[int, int, int]]] = {"dark": BACKGROUNDS, "light": LIGHT_BACKGROUNDS,
                                                        "warm": WARM_BACKGROUNDS}


@dataclass(frozen=True)
class ToyVideoConfig:
    """Sizes and ranges of the synthetic clips (all JSON-serialisable)."""

    size: int = 32
    num_frames: int = 8
    fps: int = 8
    min_speed: float = 1.0
    max_speed: float = 3.0
    min_shape_frac: float = 0.2
    max_shape_frac: float = 0.3
    supersample: int = 4
    crf: int = 10

    def __post_init__(self) -> None:
        if self.size < 8 or self.size % 2:
            raise ValueError(f"size must be even and >= 8, got {self.size}")
        if self.num_frames < 4:
            raise ValueError(f"num_frames must be >= 4 (cut clips need a cut in [2, T-2]), got {self.num_frames}")
        if not 0 < self.min_speed <= self.max_speed:
            raise ValueError(f"need 0 < min_speed <= max_speed, got {self.min_speed}, {self.max_speed}")
        if not 0 < self.min_shape_frac <= self.max_shape_frac < 0.8:
            raise ValueError("need 0 < min_shape_frac <= max_shape_frac < 0.8")


@dataclass(frozen=True)
class _Scene:
    background: str
    shape: str
    colour: str
    extent: float  # bounding-box side of the shape in px
    speed: float  # px / frame
    start: tuple[float, float]  # shape centre at frame 0, px

    @property
    def direction(self) -> tuple[float, float]:
        return COLOURS[self.colour][1]

    def centre(self, t: int) -> tuple[float, float]:
        dx, dy = self.direction
        return self.start[0] + t * self.speed * dx, self.start[1] + t * self.speed * dy


def _speed_words(speed: float, cfg: ToyVideoConfig) -> str:
    third = (cfg.max_speed - cfg.min_speed) / 3
    if speed < cfg.min_speed + third:
        return "slowly"
    return "steadily" if speed < cfg.min_speed + 2 * third else "quickly"


def _sample_scene(rng: np.random.Generator, cfg: ToyVideoConfig, avoid_bg: str | None = None,
                  palette: str = "dark") -> _Scene:
    backgrounds = [b for b in PALETTES[palette] if b != avoid_bg]
    background = backgrounds[rng.integers(len(backgrounds))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    extent = float(rng.uniform(cfg.min_shape_frac, cfg.max_shape_frac) * cfg.size)
    direction = np.array(COLOURS[colour][1])
    half, margin = extent / 2, 1.0 + 2.0 / cfg.supersample  # keep anti-aliased edges off the border pixels
    room = cfg.size - 2 * (half + margin)  # free travel along one axis
    max_fit = room / ((cfg.num_frames - 1) * np.abs(direction).max())
    speed = float(min(rng.uniform(cfg.min_speed, cfg.max_speed), max_fit))
    travel = (cfg.num_frames - 1) * speed * direction
    start = []
    for d in travel:
        lo, hi = half + margin - min(0.0, d), cfg.size - half - margin - max(0.0, d)
        start.append(float(rng.uniform(lo, max(lo, hi))))
    return _Scene(background, shape, colour, extent, speed, (start[0], start[1]))


def _shape_points(shape: str, cx: float, cy: float, half: float) -> np.ndarray:
    if shape == "square":
        offs = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        return np.array([(cx + half * 0.9 * ox, cy + half * 0.9 * oy) for ox, oy in offs])
    # triangle pointing up, filling the bounding box
    return np.array([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)])


def _render_frame(scene: _Scene, t: int, cfg: ToyVideoConfig) -> np.ndarray:
    """Draw one frame at ``supersample`` x resolution and box-filter it down (anti-aliasing)."""
    s, shift = cfg.supersample, 4
    big = np.empty((cfg.size * s, cfg.size * s, 3), np.uint8)
    big[:] = {**BACKGROUNDS, **LIGHT_BACKGROUNDS}[scene.background]
    colour = COLOURS[scene.colour][0]
    cx, cy = scene.centre(t)

    def fixed(v: float) -> int:  # continuous px -> supersampled pixel-centre coords, fixed point
        return int(round((v * s - 0.5) * (1 << shift)))

    half = scene.extent / 2
    if scene.shape == "circle":
        radius = int(round(half * s * (1 << shift)))
        cv2.circle(big, (fixed(cx), fixed(cy)), radius, colour, -1, cv2.LINE_AA, shift)
    else:
        pts = np.array([[fixed(x), fixed(y)] for x, y in _shape_points(scene.shape, cx, cy, half)], np.int32)
        cv2.fillPoly(big, [pts], colour, cv2.LINE_AA, shift)
    return cv2.resize(big, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA)


def _render(scene: _Scene, cfg: ToyVideoConfig) -> np.ndarray:
    return np.stack([_render_frame(scene, t, cfg) for t in range(cfg.num_frames)])


def _burn_text(frames: np.ndarray, rng: np.random.Generator, cfg: ToyVideoConfig) -> tuple[np.ndarray, str, str]:
    """Burn one static outlined word (~75-90% of the frame width) into every frame."""
    s = cfg.supersample
    word = WORDS[rng.integers(len(WORDS))]
    colour_name = list(TEXT_COLOURS)[rng.integers(len(TEXT_COLOURS))]
    font, side = cv2.FONT_HERSHEY_DUPLEX, cfg.size * s
    (w1, h1), _ = cv2.getTextSize(word, font, 1.0, 2)
    scale = min(rng.uniform(0.75, 0.9) * side / w1, 0.4 * side / h1)
    thick = max(1, int(round(scale * 2.2)))
    (w, h), base = cv2.getTextSize(word, font, scale, thick)
    pad = thick + 2 * s
    x = int(rng.integers(pad, max(pad + 1, side - w - pad)))
    y = int(rng.integers(h + pad, max(h + pad + 1, side - base - pad)))
    overlay = np.zeros((side, side, 3), np.uint8)
    alpha = np.zeros((side, side), np.uint8)
    for img, value, extra in ((alpha, 255, 2 * s), (overlay, (0, 0, 0), 2 * s), (overlay, TEXT_COLOURS[colour_name], 0)):
        cv2.putText(img, word, (x, y), font, scale, value, thick + extra, cv2.LINE_AA)
    overlay = cv2.resize(overlay, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA).astype(np.float32)
    a = cv2.resize(alpha, (cfg.size, cfg.size), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 255
    # overlay was drawn with its outline on black, so premultiplied compositing is exact
    out = frames.astype(np.float32) * (1 - a) + overlay
    return np.clip(np.round(out), 0, 255).astype(np.uint8), word, colour_name


def _caption(scene: _Scene, static: bool, cfg: ToyVideoConfig) -> str:
    thing = f"a {scene.colour} {scene.shape}"
    if static:
        return f"{thing} stays still on a {scene.background} background"
    motion = f"moves {COLOURS[scene.colour][2]} {_speed_words(scene.speed, cfg)}"
    return f"{thing} {motion} on a {scene.background} background"


def still_caption(meta: dict[str, Any]) -> str:
    """Caption for a single frame of a clip (no motion words)."""
    return f"a {meta['colour']} {meta['shape']} on a {meta['background']} background"


def generate_clip(seed: int, kind: str, cfg: ToyVideoConfig = ToyVideoConfig(),
                  palette: str = "dark") -> tuple[np.ndarray, dict[str, Any]]:
    """Render one clip ``(T, H, W, 3)`` uint8 and its JSON-serialisable metadata (see module doc).

    ``palette``: the backgrounds drawn from, ``"dark"`` (:data:`BACKGROUNDS`), ``"light"``
    (:data:`LIGHT_BACKGROUNDS`) or ``"warm"`` (:data:`WARM_BACKGROUNDS`); shapes, colours and motion are
    the same for all.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if palette not in PALETTES:
        raise ValueError(f"palette must be one of {tuple(PALETTES)}, got {palette!r}")
    scene = _sample_scene(np.random.default_rng(seed), cfg, palette=palette)
    extra = np.random.default_rng([seed, KINDS.index(kind)])  # kind-specific draws; scene unchanged
    static = kind == "static"
    if static:
        scene = _Scene(scene.background, scene.shape, scene.colour, scene.extent, 0.0, scene.start)
    frames = _render(scene, cfg)
    meta: dict[str, Any] = {
        "caption": _caption(scene, static, cfg),
        "shape": scene.shape,
        "colour": scene.colour,
        "background": scene.background,
        "direction": [round(v, 6) for v in scene.direction],
        "speed": round(scene.speed, 6),
        "kind": kind,
        "static": static,
        "has_text": kind == "text",
        "cut_frame": None,
        "fps": cfg.fps,
        "num_frames": cfg.num_frames,
        "motion_bucket_id": 0 if static else int(round(min(scene.speed / cfg.max_speed, 1.0) * 200)),
        "seed": int(seed),
        "size": cfg.size,
        "shape_size": round(scene.extent, 4),
        "start": [round(v, 4) for v in scene.start],
    }
    if kind == "text":
        frames, word, text_colour = _burn_text(frames, extra, cfg)
        meta.update(text=word, text_colour=text_colour)
    elif kind == "cut":
        cut = int(extra.integers(2, cfg.num_frames - 1))  # in [2, T-2]
        other = _sample_scene(extra, cfg, avoid_bg=scene.background, palette=palette)
        while other.shape == scene.shape or other.colour == scene.colour:
            other = _sample_scene(extra, cfg, avoid_bg=scene.background, palette=palette)
        frames[cut:] = _render(other, cfg)[: cfg.num_frames - cut]
        meta["cut_frame"] = cut
    return frames, meta


# ---------------------------------------------------------------------------------------------
# dataset writing
