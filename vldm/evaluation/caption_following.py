"""Caption following on toy text-to-video samples: does the generated shape have the prompt's
colour, and does it move in the prompt's direction?

The toy data (:mod:`vldm.data.toy`) draws one coloured shape moving over a dark background; its
colour fixes its direction. :func:`read_clip` measures a clip without any learned network:

- background: the per-channel median of the frame border over all frames (the toy shape never
  touches the border pixels);
- shape: the pixels whose RGB distance to the background is at least :data:`SHAPE_FRACTION` of
  the frame's largest distance (and at least :data:`MIN_CONTRAST`);
- colour: the ``COLOURS`` RGB nearest to the median of the shape's **core** pixels, those at
  least :data:`CORE_FRACTION` of the frame's largest distance from the background, so neither
  anti-aliased edges nor a blurry sample's halo decide it;
- direction: the slope of a least-squares line through the per-frame centroids of the shape
  (distance-weighted), ``None`` when it moves less than :data:`MIN_SPEED` px/frame or fewer than
  two frames show a shape.

:func:`caption_following` scores videos against their prompts: colour accuracy, and direction
accuracy within :data:`MAX_ANGLE_DEG` (a video whose direction cannot be read is a miss).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from vldm.data.toy import BACKGROUNDS, COLOURS, SHAPES

MIN_CONTRAST: float = 40.0  # RGB distance from the background below which nothing is a shape
SHAPE_FRACTION: float = 0.5  # of a frame's largest background distance: shape pixels
CORE_FRACTION: float = 0.8  # of a frame's largest background distance: core pixels (colour)
MIN_SPEED: float = 0.25  # px/frame of the centroid track below which a clip reads as static
MAX_ANGLE_DEG: float = 45.0
PROMPT_TEMPLATE: str = "a {colour} {shape} moving {direction}"

#: direction phrase -> unit (dx, dy) in image coordinates (x right, y down)
DIRECTIONS: dict[str, tuple[float, float]] = {words: direction for _, direction, words in COLOURS.values()}


@dataclass(frozen=True)
class PromptTarget:
    """What a prompt asks for: a toy colour name and a unit direction ``(dx, dy)`` in image coordinates."""

    colour: str
    direction: tuple[float, float]


@dataclass(frozen=True)
class ClipReading:
    """What a clip shows: the shape's nearest toy colour, its unit direction, speed and size.

    ``colour`` / ``direction`` are ``None`` when no shape (or, for the direction, no motion) is
    found; ``speed`` is px/frame of the centroid track; ``shape_fraction`` is the mean fraction
    of each frame's pixels that belong to the shape.
    """

    colour: str | None
    direction: tuple[float, float] | None
    speed: float
    shape_fraction: float


def toy_prompts(count: int = 24) -> list[str]:
    """``count`` prompts ``"a {colour} {shape} moving {direction}"``, cycling colours, then shapes.

    They are not training captions: the toy captions say "moves"/"stays still" and always name a
    background (and a speed), while these say "moving" and name neither.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    colours = list(COLOURS)
    prompts = []
    for i in range(count):
        colour = colours[i % len(colours)]
        shape = SHAPES[(i // len(colours)) % len(SHAPES)]
        prompts.append(PROMPT_TEMPLATE.format(colour=colour, shape=shape, direction=COLOURS[colour][2]))
    return prompts


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _remove_phrase(words: list[str], phrase: str) -> tuple[list[str], int]:
    """``words`` with every occurrence of the word sequence ``phrase`` removed, and how many there were."""
    target, out, found, i = phrase.split(), [], 0, 0
    while i < len(words):
        if words[i : i + len(target)] == target:
            found, i = found + 1, i + len(target)
        else:
            out.append(words[i])
            i += 1
    return out, found


def _vocabulary() -> str:
    return f"colours {sorted(COLOURS)} and directions {sorted(DIRECTIONS, key=len)}"


def prompt_target(prompt: str) -> PromptTarget:
    """The toy colour and direction a prompt names (background names such as "dark red" are not colours).

    Direction phrases are matched longest first ("up and to the right" before "up" and "right").
    Raises ValueError for a prompt that names no toy colour or no direction, or more than one of either.
    """
    words = _words(prompt)
    for background in sorted(BACKGROUNDS, key=len, reverse=True):
        words, _ = _remove_phrase(words, background)
    directions = []
    for phrase in sorted(DIRECTIONS, key=len, reverse=True):
        words, found = _remove_phrase(words, phrase)
        directions += [phrase] * found
    colours = [w for w in words if w in COLOURS]
    if len(set(colours)) != 1 or len(set(directions)) != 1:
        raise ValueError(f"prompt {prompt!r} must name exactly one toy colour and one direction "
                         f"(found colours {colours}, directions {directions}); it takes {_vocabulary()}")
    return PromptTarget(colours[0], DIRECTIONS[directions[0]])


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if min(frames.shape[1:3]) < 3:
        raise ValueError(f"frames must be at least 3x3 px to have a border and an inside, got {frames.shape[1:3]}")
    return frames


def background_rgb(frames: np.ndarray) -> np.ndarray:
    """Per-channel median of the outermost pixel ring of every frame, float ``(3,)``."""
    border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, 1:-1, 0], frames[:, 1:-1, -1]], axis=1)
    return np.median(border.reshape(-1, 3).astype(np.float64), axis=0)


def nearest_colour(rgb: np.ndarray) -> str:
    """The ``COLOURS`` name whose RGB is nearest (Euclidean) to ``rgb``."""
    names = list(COLOURS)
    palette = np.array([COLOURS[n][0] for n in names], np.float64)
    return names[int(np.argmin(np.linalg.norm(palette - np.asarray(rgb, np.float64), axis=1)))]


def _track(distance: np.ndarray) -> tuple[list[tuple[int, float, float]], list[np.ndarray], float]:
    """Per-frame (t, x, y) weighted centroids of the shape, per-frame core masks, and the mean shape fraction."""
    h, w = distance.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    track, cores, fractions = [], [], []
    for t, d in enumerate(distance):
        peak = float(d.max())
        if peak < MIN_CONTRAST:
            fractions.append(0.0)
            continue
        low = max(MIN_CONTRAST, SHAPE_FRACTION * peak)
        weight = np.clip(d - low, 0.0, None) * (d >= low)
        fractions.append(float((d >= low).mean()))
        if weight.sum() <= 0:  # only the peak pixel itself reaches the threshold: weight it alone
            weight = (d >= peak).astype(np.float64)
        total = weight.sum()
        track.append((t, float((weight * xs).sum() / total), float((weight * ys).sum() / total)))
        cores.append(d >= max(MIN_CONTRAST, CORE_FRACTION * peak))
    return track, cores, float(np.mean(fractions))


def _velocity(track: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Least-squares slope (px/frame) of x(t) and y(t)."""
    t, x, y = (np.array(v, np.float64) for v in zip(*track))
    tc = t - t.mean()
    denom = float((tc**2).sum())
    return float((tc * (x - x.mean())).sum() / denom), float((tc * (y - y.mean())).sum() / denom)


def read_clip(frames: np.ndarray) -> ClipReading:
    """Read the toy shape's colour, direction, speed and size from uint8 ``(T, H, W, 3)`` frames (see module doc)."""
    frames = _check_frames(frames)
    pixels = frames.astype(np.float64)
    distance = np.linalg.norm(pixels - background_rgb(frames), axis=-1)
    track, cores, fraction = _track(distance)
    if not track:
        return ClipReading(None, None, 0.0, 0.0)
    shown = [t for t, _, _ in track]
    core_pixels = np.concatenate([pixels[t][core] for t, core in zip(shown, cores)])
    colour = nearest_colour(np.median(core_pixels, axis=0))
    if len(track) < 2:
        return ClipReading(colour, None, 0.0, fraction)
    vx, vy = _velocity(track)
    speed = math.hypot(vx, vy)
    direction = (vx / speed, vy / speed) if speed >= MIN_SPEED else None
    return ClipReading(colour, direction, speed, fraction)


def angle_error_deg(direction: tuple[float, float], target: tuple[float, float]) -> float:
    """Angle in degrees, in [0, 180], between two direction vectors."""
    a, b = np.asarray(direction, np.float64), np.asarray(target, np.float64)
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def _row(prompt: str, target: PromptTarget, reading: ClipReading) -> dict[str, Any]:
    error = None if reading.direction is None else angle_error_deg(reading.direction, target.direction)
    return {
        "prompt": prompt,
        "target_colour": target.colour,
        "colour": reading.colour,
        "angle_error_deg": error,
        "speed": reading.speed,
        "shape_fraction": reading.shape_fraction,
        "colour_ok": reading.colour == target.colour,
        "direction_ok": error is not None and error <= MAX_ANGLE_DEG,
    }


def caption_following(videos: Sequence[np.ndarray], prompts: Sequence[str]) -> dict[str, Any]:
    """Colour and direction accuracy of uint8 ``(T, H, W, 3)`` videos against the prompts they were made from.

    Returns ``colour_accuracy``, ``direction_accuracy`` (within :data:`MAX_ANGLE_DEG`; no direction
    read is a miss), ``count`` and per-video ``rows`` (prompt, read colour, angle error in degrees, ...).
    """
    if len(videos) != len(prompts):
        raise ValueError(f"got {len(videos)} videos but {len(prompts)} prompts: pass one prompt per video")
    if not videos:
        raise ValueError("no videos to score: pass at least one video and its prompt")
    targets = [prompt_target(p) for p in prompts]  # refuse a bad prompt before reading any clip
    rows = [_row(p, target, read_clip(v)) for p, target, v in zip(prompts, targets, videos)]
    return {
        "colour_accuracy": float(np.mean([r["colour_ok"] for r in rows])),
        "direction_accuracy": float(np.mean([r["direction_ok"] for r in rows])),
        "count": len(rows),
        "max_angle_deg": MAX_ANGLE_DEG,
        "rows": rows,
    }
