"""Cascaded shot-boundary detection: hard cuts, fades and cross-dissolves.

The SVD paper (Blattmann et al. 2023, Sec. 3.1) found that a single cut detector at
a low frame rate misses cuts and fades, and cascaded detectors at several frame rates. This is a
two-pass cascade of our own design:

* **pass 1 (cheap)**: frames ``step`` apart, shrunk to ``cheap_size`` px (short side), are
  compared with a *changed-pixel fraction*: after undoing the global shift (a camera pan, found
  by template matching within ``max_shift`` of the frame), the share of pixels whose colour
  leaves, by more than ``pixel_threshold`` in some channel, the colour range of the other frame
  within ``shift_tolerance`` px (so small motion is forgiven). Pairs above
  ``candidate_threshold`` mark candidate windows.
* **pass 2 (fine)**: inside each candidate window, every consecutive frame pair at ``fine_size``
  px; the peak pair is a cut when its fraction is at least ``cut_threshold`` *and*
  ``min_peak_ratio`` times the median of the surrounding ``context_frames`` pairs on each side
  (fast motion or camera pans raise all neighbouring pairs, a cut only one).
* **fades**: searched at the full frame rate inside candidate windows, windows next to a
  black/white sampled frame and windows where the sampled mean luminance dips. A run of black
  (or white) frames, grown outwards over the frames whose mean luminance keeps ramping towards
  it, is one ``"fade"`` transition; so is a luminance valley without a black frame (a fade-out
  straight into a fade-in) when it has ramps of ``min_ramp_frames`` on both sides and its bottom
  is at most ``dip_ratio`` of the luminance around. Cuts inside or next to a fade are dropped.
* **dissolves** (:mod:`data_curation.dissolves`): candidates from sample triples as far apart as
  a dissolve is long whose ends differ more than the scenes change by themselves and whose
  middle is a blend of them, or whose block-mean colours step with a loss of fine detail,
  validated at the full frame rate (ends placed by a blend of two drifting scenes' block colours;
  a straight blend-weight ramp, the loss of fine detail a blend has and motion has not, every
  block's colours mixed along one ramp); one ``"dissolve"`` transition spans its
  blended frames. Dissolves touching a fade are dropped; cuts touching a dissolve are part of it.

Thresholds were tuned on synthetic data (:mod:`data_curation.synthetic`, ``vldm.data.toy``) and
checked against pans, fast motion and flicker made in the tests; they are per-frame quantities,
so the same values serve 8 fps toys and 24-30 fps footage. The dissolve thresholds were tuned on
the textured, moving scenes of :mod:`bench.transitions` (its seeds 5 and 7), which also measures them.

A :class:`Transition` is the inclusive frame range ``[start, end]`` that belongs to no scene. A
**hard cut** between frames ``c - 1`` and ``c`` (``c`` = first frame of the new scene, the toy
truth's ``cut_frame``) is ``Transition(c - 1, c, "cut")``: the two frames either side of the jump
(often smeared by the codec) are excluded; :attr:`Transition.boundary` is ``c``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from data_curation import dissolves

TRANSITION_KINDS: tuple[str, ...] = ("cut", "fade", "dissolve")
DETECTORS: tuple[str, ...] = ("cascade", "transnetv2", "both")
MAX_RELIGHT_GAIN: float = 3.0  # the largest one-frame change of exposure taken for lighting, not a cut


@dataclass(frozen=True)
class CutDetectorConfig:
    """Thresholds of :func:`detect_transitions` (fractions are of pixels, levels of 0-255 luma).

    ``detector``: ``"cascade"`` (this module), ``"transnetv2"`` (the learned detector of
    :mod:`data_curation.learned_cuts`) or ``"both"`` (their union); the learned one falls back
    to the cascade, with one line, when its package is missing; ``learned_device`` ("auto": CUDA
    when available) and ``learned_threshold`` (per-frame probability) configure it.
    ``step``: frame step of pass 1. ``cheap_size`` / ``fine_size``: short side of the frames each
    pass compares (frames are never upscaled; ``fine_size=None`` keeps the input size).
    ``pixel_threshold``: colour change that marks a pixel changed. ``shift_tolerance``: px of
    motion forgiven per pixel. ``max_shift``: the largest global shift (camera pan) undone, as a
    fraction of the short side at the cheap size (0 turns pan compensation off).
    ``candidate_threshold`` / ``cut_threshold``: changed fractions that make a pass-1 window a
    candidate / a pass-2 peak a cut, when the peak is also ``min_peak_ratio`` x the median of the
    ``context_frames`` pairs either side (that median floored at ``ratio_floor``).
    ``min_scene_frames``: of two cuts closer than this, the weaker goes. ``relight_correlation``: a
    peak whose two frames' high-passed luma still correlates this much (over small shifts) and whose
    colours one gain and offset for all channels maps within ``candidate_threshold`` is a lighting
    change (a flash, flicker, auto exposure), not a cut (None: no such check).
    ``dark_level`` / ``bright_level``: a frame is black when 99.5% of its pixels are at most
    ``dark_level``, white when 99.5% are at least ``bright_level``. ``ramp_min_step``: the least
    change of mean luma per frame (and ``ramp_min_relative`` of its value) that continues a fade's
    ramp; ``max_ramp_frames`` caps each ramp. A luma valley with no black frame is a fade when
    both ramps have ``min_ramp_frames`` and its bottom is <= ``dip_ratio`` x the luma around it.
    ``detect_dissolves``: look for cross-dissolves of ``min_dissolve_seconds`` to
    ``max_dissolve_seconds`` (at most :data:`data_curation.dissolves.MAX_DISSOLVE_FRAMES` frames),
    comparing thumbnails of ``dissolve_size`` px; a candidate's ends differ by at least
    ``dissolve_end_change`` (1 - correlation) and ``dissolve_context_ratio`` x the change beside
    it, a validated one by ``dissolve_end_context`` x its scenes' own change over its length;
    blend weights >= ``dissolve_min_weight``, relative blend fit in ``[dissolve_min_fit,
    dissolve_max_fit]``, RMS of the weights about a straight ramp <= ``dissolve_max_ramp_error``,
    detail kept <= ``dissolve_max_energy_ratio`` x a blend's, block-mean colours changing by >=
    ``dissolve_min_colour_change`` levels (RMS over 4 x 4 blocks) with R^2 >=
    ``dissolve_min_colour_fit`` of their blend model (:mod:`data_curation.dissolves`).
    """

    detector: str = "cascade"
    learned_device: str = "auto"
    learned_threshold: float = 0.5
    step: int = 4
    cheap_size: int = 32
    fine_size: int | None = 64
    pixel_threshold: float = 20.0
    shift_tolerance: int = 1
    max_shift: float = 0.125
    candidate_threshold: float = 0.25
    cut_threshold: float = 0.45
    min_peak_ratio: float = 3.0
    ratio_floor: float = 0.02
    context_frames: int = 4
    min_scene_frames: int = 4
    relight_correlation: float | None = 0.7
    detect_fades: bool = True
    dark_level: float = 24.0
    bright_level: float = 235.0
    ramp_min_step: float = 0.5
    ramp_min_relative: float = 0.02
    max_ramp_frames: int = 48
    min_ramp_frames: int = 2
    dip_ratio: float = 0.35
    detect_dissolves: bool = True
    dissolve_size: int = 8
    min_dissolve_seconds: float = 0.2
    max_dissolve_seconds: float = 2.0
    dissolve_end_change: float = 0.7
    dissolve_context_ratio: float = 1.5
    dissolve_end_context: float = 1.5
    dissolve_min_weight: float = 0.2
    dissolve_min_fit: float = 0.5
    dissolve_max_fit: float = 1.25
    dissolve_max_ramp_error: float = 0.25
    dissolve_max_energy_ratio: float = 1.25
    dissolve_min_colour_change: float = 20.0
    dissolve_min_colour_fit: float = 0.9

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
        if not 0 < self.learned_threshold < 1:
            raise ValueError(f"learned_threshold must lie in (0, 1), got {self.learned_threshold}")
        if self.step < 1:
            raise ValueError(f"step must be >= 1, got {self.step}")
        if self.cheap_size < 4 or (self.fine_size is not None and self.fine_size < 4):
            raise ValueError(f"cheap_size and fine_size must be >= 4, got {self.cheap_size}, {self.fine_size}")
        if not 0 < self.pixel_threshold < 255:
            raise ValueError(f"pixel_threshold must be in (0, 255), got {self.pixel_threshold}")
        if not 0 <= self.shift_tolerance <= 3:
            raise ValueError(f"shift_tolerance must be in [0, 3], got {self.shift_tolerance}")
        if not 0 <= self.max_shift <= 0.25:
            raise ValueError(f"max_shift must be in [0, 0.25] (fraction of the short side), got {self.max_shift}")
        if not 0 < self.candidate_threshold <= self.cut_threshold <= 1:
            raise ValueError(
                f"need 0 < candidate_threshold <= cut_threshold <= 1, got {self.candidate_threshold}, {self.cut_threshold}"
            )
        if self.min_peak_ratio < 1 or self.ratio_floor < 0:
            raise ValueError(f"need min_peak_ratio >= 1 and ratio_floor >= 0, got {self.min_peak_ratio}, {self.ratio_floor}")
        if self.context_frames < 1 or self.min_scene_frames < 1:
            raise ValueError("context_frames and min_scene_frames must be >= 1")
        if not 0 <= self.dark_level < self.bright_level <= 255:
            raise ValueError(f"need 0 <= dark_level < bright_level <= 255, got {self.dark_level}, {self.bright_level}")
        if min(self.ramp_min_step, self.ramp_min_relative, self.max_ramp_frames, self.min_ramp_frames) < 0:
            raise ValueError("ramp_min_step, ramp_min_relative, max_ramp_frames and min_ramp_frames must be >= 0")
        if self.relight_correlation is not None and not 0 < self.relight_correlation <= 1:
            raise ValueError(f"relight_correlation must lie in (0, 1] or be None, got {self.relight_correlation}")
        if not 0 < self.dip_ratio < 1:
            raise ValueError(f"dip_ratio must be in (0, 1), got {self.dip_ratio}")
        self._check_dissolves()

    def _check_dissolves(self) -> None:
        if self.dissolve_size < 4:
            raise ValueError(f"dissolve_size must be >= 4, got {self.dissolve_size}")
        if not 0 < self.min_dissolve_seconds <= self.max_dissolve_seconds:
            raise ValueError(
                f"need 0 < min_dissolve_seconds <= max_dissolve_seconds, got {self.min_dissolve_seconds}, "
                f"{self.max_dissolve_seconds}"
            )
        if not 0 < self.dissolve_end_change <= 2:
            raise ValueError(f"dissolve_end_change must be in (0, 2], got {self.dissolve_end_change}")
        if self.dissolve_context_ratio < 1 or self.dissolve_end_context < 1:
            raise ValueError(
                f"dissolve_context_ratio and dissolve_end_context must be >= 1, got {self.dissolve_context_ratio}, "
                f"{self.dissolve_end_context}"
            )
        if not 0 <= self.dissolve_min_weight < 0.5:
            raise ValueError(f"dissolve_min_weight must be in [0, 0.5), got {self.dissolve_min_weight}")
        if self.dissolve_max_energy_ratio < 1:
            raise ValueError(f"dissolve_max_energy_ratio must be >= 1, got {self.dissolve_max_energy_ratio}")
        if not 0 < self.dissolve_min_fit <= 1 or not 0 < self.dissolve_max_ramp_error < 1:
            raise ValueError(
                f"dissolve_min_fit must be in (0, 1] and dissolve_max_ramp_error in (0, 1), got "
                f"{self.dissolve_min_fit}, {self.dissolve_max_ramp_error}"
            )
        if self.dissolve_max_fit < self.dissolve_min_fit:
            raise ValueError(f"dissolve_max_fit must be >= dissolve_min_fit, got {self.dissolve_max_fit}")
        if self.dissolve_min_colour_change < 0 or not 0 <= self.dissolve_min_colour_fit <= 1:
            raise ValueError(
                f"dissolve_min_colour_change must be >= 0 and dissolve_min_colour_fit in [0, 1], got "
                f"{self.dissolve_min_colour_change}, {self.dissolve_min_colour_fit}"
            )


@dataclass(frozen=True)
class Transition:
    """Frames ``[start, end]`` (inclusive) that belong to no scene; ``kind`` is "cut", "fade" or "dissolve".

    A hard cut into frame ``c`` is ``Transition(c - 1, c, "cut")`` (module doc). ``score``: the
    detector's evidence (changed fraction of a cut, 1.0 for fades); ``found_by``: the detector that
    found it (``"cascade"`` or ``"transnetv2"``; both, comma-joined, when they agree). Neither is
    part of equality.
    """

    start: int
    end: int
    kind: str
    score: float = field(default=0.0, compare=False)
    found_by: str = field(default="cascade", compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"a transition needs 0 <= start <= end, got [{self.start}, {self.end}]")
        if self.kind not in TRANSITION_KINDS:
            raise ValueError(f"kind must be one of {TRANSITION_KINDS}, got {self.kind!r}")

    @property
    def boundary(self) -> int:
        """First frame of the new scene for a cut; the middle frame of a fade."""
        return self.end if self.kind == "cut" else (self.start + self.end + 1) // 2


def _shrink(frame: np.ndarray, short_side: int | None) -> np.ndarray:
    h, w = frame.shape[:2]
    if short_side is None or short_side >= min(h, w):
        return np.ascontiguousarray(frame, dtype=np.uint8)
    scale = short_side / min(h, w)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def global_shift(a: np.ndarray, b: np.ndarray, radius: int) -> tuple[int, int]:
    """Integer ``(dy, dx)`` with ``b[y + dy, x + dx] ~ a[y, x]`` (camera pan), searched within ``radius`` px.

    Exhaustive template match of ``a``'s centre in ``b`` (sum of squared differences); no shift
    when it fits as well as the best one (flat frames).
    """
    h, w = a.shape[:2]
    r = min(radius, (h - 1) // 4, (w - 1) // 4)
    if r < 1:
        return 0, 0
    cost = cv2.matchTemplate(b, a[r : h - r, r : w - r], cv2.TM_SQDIFF)
    _, _, (x, y), _ = cv2.minMaxLoc(cost)
    if cost[r, r] <= cost[y, x] * 1.02 + 1.0:
        return 0, 0
    return y - r, x - r


def changed_fraction(
    a: np.ndarray, b: np.ndarray, pixel_threshold: float, tolerance: int = 1, shift: tuple[int, int] = (0, 0)
) -> float:
    """Share of pixels of ``a`` whose colour leaves, by more than ``pixel_threshold`` in some channel,
    the range of ``b``'s colours within ``tolerance`` px of the matching point (``shift``: see
    :func:`global_shift`); only the region both frames cover counts. uint8 ``(H, W, 3)`` inputs.
    """
    dy, dx = shift
    h, w = a.shape[:2]
    if abs(dy) >= h or abs(dx) >= w:
        return 1.0
    a = a[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    b = b[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)]
    if tolerance > 0:
        kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
        lo, hi = cv2.erode(b, kernel), cv2.dilate(b, kernel)
    else:
        lo = hi = b
    excess = cv2.max(cv2.subtract(lo, a), cv2.subtract(a, hi))
    worst = np.maximum(np.maximum(excess[..., 0], excess[..., 1]), excess[..., 2])
    return float(np.count_nonzero(worst > pixel_threshold)) / worst.size


class _Frames:
    """Lazily shrunk frames, pair scores and per-frame luma statistics, each computed at most once."""

    def __init__(self, frames: np.ndarray, cfg: CutDetectorConfig) -> None:
        self.frames, self.cfg = frames, cfg
        self._cheap: dict[int, np.ndarray] = {}
        self._fine: dict[int, np.ndarray] = {}
        self._luma: dict[int, tuple[float, float, float]] = {}
        self._pair: dict[int, float] = {}
        self._fine_shift: dict[int, tuple[int, int]] = {}

    def cheap(self, i: int) -> np.ndarray:
        if i not in self._cheap:
            self._cheap[i] = _shrink(self.frames[i], self.cfg.cheap_size)
        return self._cheap[i]

    def fine(self, i: int) -> np.ndarray:
        if i not in self._fine:
            self._fine[i] = _shrink(self.frames[i], self.cfg.fine_size)
        return self._fine[i]

    def shift(self, i: int, j: int) -> tuple[int, int]:
        """Global motion from frame ``i`` to ``j`` at the cheap size."""
        a = self.cheap(i)
        radius = int(round(self.cfg.max_shift * min(a.shape[:2])))
        return global_shift(a, self.cheap(j), radius) if radius > 0 else (0, 0)

    def cheap_change(self, i: int, j: int) -> float:
        cfg = self.cfg
        return changed_fraction(self.cheap(i), self.cheap(j), cfg.pixel_threshold, cfg.shift_tolerance, self.shift(i, j))

    def fine_shift(self, j: int) -> tuple[int, int]:
        """Global motion from frame ``j - 1`` to ``j``, found at the cheap size, in px of the fine size."""
        if j not in self._fine_shift:
            dy, dx = self.shift(j - 1, j)
            scale = self.fine(j).shape[0] / self.cheap(j).shape[0]
            self._fine_shift[j] = (int(round(dy * scale)), int(round(dx * scale)))
        return self._fine_shift[j]

    def pair(self, j: int) -> float:
        """Changed fraction between frames ``j - 1`` and ``j`` at the fine size, pan compensated."""
        if j not in self._pair:
            self._pair[j] = changed_fraction(self.fine(j - 1), self.fine(j), self.cfg.pixel_threshold,
                                             self.cfg.shift_tolerance, self.fine_shift(j))
        return self._pair[j]

    def structure_correlation(self, j: int) -> float:
        """Best correlation of the high-passed luma of frames ``j - 1`` and ``j`` at the fine size over
        shifts up to ``max_shift``: near 1 when only the lighting changed (a flash, a light switched
        on, auto exposure: gain and offset keep every edge in place), near 0 across a cut."""
        a, b = _high_pass(self.fine(j - 1)), _high_pass(self.fine(j))
        h, w = a.shape
        r = min(int(round(self.cfg.max_shift * min(h, w))), (h - 1) // 4, (w - 1) // 4)
        score = cv2.matchTemplate(b, a[r : h - r, r : w - r], cv2.TM_CCOEFF_NORMED)
        return float(np.nanmax(score)) if np.isfinite(score).any() else 0.0

    def relit_change(self, j: int) -> float:
        """:meth:`pair` after the best single gain and offset (the same for every channel) maps frame
        ``j - 1`` onto frame ``j``: small for a change of exposure, large for new colours (1.0 when
        that gain is beyond :data:`MAX_RELIGHT_GAIN` either way)."""
        a, b = self.fine(j - 1).astype(np.float32), self.fine(j).astype(np.float32)
        x, y = a.ravel() - a.mean(), b.ravel() - b.mean()
        gain = float(x @ y) / max(float(x @ x), 1e-6)
        if not MAX_RELIGHT_GAIN ** -1 <= gain <= MAX_RELIGHT_GAIN:
            return 1.0  # a tenfold dimming in one frame is a cut to a dark shot, not the lighting
        relit = np.clip((a - a.mean()) * gain + b.mean(), 0, 255).astype(np.uint8)
        return changed_fraction(relit, self.fine(j), self.cfg.pixel_threshold, self.cfg.shift_tolerance,
                                self.fine_shift(j))

    def luma(self, i: int) -> tuple[float, float, float]:
        """(0.5th percentile, mean, 99.5th percentile) of the luma of frame ``i`` at the cheap size."""
        if i not in self._luma:
            y = self.cheap(i).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            lo, hi = np.percentile(y, [0.5, 99.5])
            self._luma[i] = (float(lo), float(y.mean()), float(hi))
        return self._luma[i]

    def blank(self, i: int) -> bool:
        lo, _, hi = self.luma(i)
        return hi <= self.cfg.dark_level or lo >= self.cfg.bright_level


def _high_pass(frame: np.ndarray) -> np.ndarray:
    """Luma minus its blur (sigma 2 px): edges and texture without brightness."""
    y = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return y - cv2.GaussianBlur(y, (0, 0), 2.0)


def _grid(num_frames: int, step: int) -> list[int]:
    grid = list(range(0, num_frames, step))
    if grid[-1] != num_frames - 1:
        grid.append(num_frames - 1)
    return grid


def _ramp(fr: _Frames, i: int, direction: int, sign: int) -> int:
    """From frame ``i``, walk in ``direction`` while each next frame is brighter (``sign=+1``;
    darker for ``-1``) by at least the ramp step; returns the last frame of the ramp (``i`` if none)."""
    cfg, n = fr.cfg, len(fr.frames)
    last = i
    while abs(last - i) < cfg.max_ramp_frames:
        k, beyond = last + direction, last + 2 * direction
        if not (0 <= k < n and 0 <= beyond < n):
            break
        here, further = fr.luma(k)[1], fr.luma(beyond)[1]
        if sign * (further - here) < max(cfg.ramp_min_step, cfg.ramp_min_relative * max(further, here)):
            break
        last = k
    return last


def _fade_at(fr: _Frames, seed: int) -> Transition | None:
    """The fade around ``seed`` (a black/white frame, or a luma valley), or None if it is not one."""
    cfg, n = fr.cfg, len(fr.frames)
    blank = fr.blank(seed)
    a = b = seed
    if blank:
        while a > 0 and fr.blank(a - 1):
            a -= 1
        while b < n - 1 and fr.blank(b + 1):
            b += 1
    sign = -1 if blank and fr.luma(seed)[0] >= cfg.bright_level else 1
    start, end = _ramp(fr, a, -1, sign), _ramp(fr, b, +1, sign)
    if blank:
        return Transition(start, end, "fade", 1.0)
    if min(a - start, end - b) < cfg.min_ramp_frames:
        return None
    bottom = fr.luma(seed)[1]
    outside = [fr.luma(k)[1] for k in (start - 1, end + 1) if 0 <= k < n] or [fr.luma(start)[1], fr.luma(end)[1]]
    if bottom > cfg.dip_ratio * min(outside):
        return None
    return Transition(start, end, "fade", 1.0 - bottom / max(min(outside), 1e-6))


def _fades(fr: _Frames, seeds: set[int]) -> list[Transition]:
    """Validated, non-overlapping fades grown from the seed frames."""
    out: list[Transition] = []
    for seed in sorted(seeds):
        if out and seed <= out[-1].end:
            continue
        fade = _fade_at(fr, seed)
        if fade is not None:
            if out and fade.start <= out[-1].end:
                out[-1] = Transition(out[-1].start, max(out[-1].end, fade.end), "fade", max(out[-1].score, fade.score))
            else:
                out.append(fade)
    return out


def _seeds(fr: _Frames, lo: int, hi: int) -> set[int]:
    """Frames in ``[lo, hi]`` that may be the bottom of a fade: black/white ones, local luma minima."""
    n = len(fr.frames)
    found = set()
    for i in range(lo, hi + 1):
        if fr.blank(i):
            found.add(i)
        elif 0 < i < n - 1 and fr.luma(i)[1] < fr.luma(i - 1)[1] and fr.luma(i)[1] <= fr.luma(i + 1)[1]:
            found.add(i)
    return found


def _confirm_cut(fr: _Frames, lo: int, hi: int) -> Transition | None:
    """Pass 2 inside the window of pairs ``(j - 1, j)``, ``lo < j <= hi``: the peak pair, if it is a cut."""
    cfg, n = fr.cfg, len(fr.frames)
    peak_j = max(range(lo + 1, hi + 1), key=lambda j: (fr.pair(j), -j))
    peak = fr.pair(peak_j)
    if peak < cfg.cut_threshold:
        return None
    near = range(peak_j - cfg.context_frames, peak_j + cfg.context_frames + 1)
    around = [fr.pair(j) for j in near if 1 <= j < n and j != peak_j]
    background = float(np.median(around)) if around else 0.0
    if peak < cfg.min_peak_ratio * max(background, cfg.ratio_floor):
        return None
    if cfg.relight_correlation is not None and fr.structure_correlation(peak_j) >= cfg.relight_correlation \
            and fr.relit_change(peak_j) < cfg.candidate_threshold:
        return None  # the same edges in the same places, the colours one gain away: the lighting changed
    return Transition(peak_j - 1, peak_j, "cut", peak)


def detect_transitions(frames: np.ndarray, fps: float, cfg: CutDetectorConfig = CutDetectorConfig()) -> list[Transition]:
    """Hard cuts, fades and dissolves of ``frames`` (uint8 ``(T, H, W, 3)``), sorted by start (module doc).

    Cut and fade thresholds are per frame; ``fps`` turns the dissolve lengths (seconds) into
    frames, and must be > 0 when ``detect_dissolves`` is on.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    n = len(frames)
    if n < 2:
        return []
    fr = _Frames(frames, cfg)
    grid = _grid(n, cfg.step)
    cuts: list[Transition] = []
    scan: list[tuple[int, int]] = []  # windows searched for fades at the full frame rate
    for k in range(len(grid) - 1):  # pass 1
        a, b = grid[k], grid[k + 1]
        score = fr.cheap_change(a, b)
        if score < cfg.candidate_threshold:
            continue
        scan.append((a, b))
        cut = _confirm_cut(fr, a, b)  # pass 2
        if cut is not None:
            cuts.append(cut)
    fades: list[Transition] = []
    if cfg.detect_fades:
        mean = [fr.luma(i)[1] for i in grid]
        for k in range(len(grid) - 1):
            if fr.blank(grid[k]) or fr.blank(grid[k + 1]):
                scan.append((grid[k], grid[k + 1]))
            elif 0 < k < len(grid) - 2 and mean[k] < mean[k - 1] and mean[k + 1] < mean[k + 2]:
                scan.append((grid[k], grid[k + 1]))  # a luminance valley between samples
        seeds: set[int] = set()
        for a, b in scan:
            seeds |= _seeds(fr, a, b)
        fades = _fades(fr, seeds)
    spans = fades + (_dissolves(fr, fps, fades) if cfg.detect_dissolves else [])
    # a cut touching a fade or dissolve is part of it (e.g. the jump into a black frame)
    cuts = [c for c in cuts if not any(f.start - 1 <= c.end and c.start <= f.end + 1 for f in spans)]
    kept: list[Transition] = []
    for cut in sorted(cuts, key=lambda c: c.start):
        if kept and cut.end - kept[-1].end < cfg.min_scene_frames:
            if cut.score > kept[-1].score:
                kept[-1] = cut
            continue
        kept.append(cut)
    return sorted(kept + spans, key=lambda t: (t.start, t.end))


def _dissolves(fr: _Frames, fps: float, fades: list[Transition]) -> list[Transition]:
    """Cross-dissolves (:mod:`data_curation.dissolves`) that overlap no fade."""
    if not fps > 0:
        raise ValueError(f"dissolve detection needs fps > 0, got {fps}")
    found = dissolves.detect_dissolves(fr, fr.cfg, fps)
    return [Transition(a, b, "dissolve", score) for a, b, score in found
            if not any(f.start - 1 <= b and a <= f.end + 1 for f in fades)]
