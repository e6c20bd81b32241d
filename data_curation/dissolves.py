"""Cross-dissolve detection for the cut cascade (:func:`data_curation.cuts.detect_transitions`).

Frames are compared as *thumbnails*: the cascade's cheap frame shrunk to ``dissolve_size`` px
(short side) and high-passed (a blur of a quarter of that size subtracted, so neither a palette
nor a large brightness gradient counts as structure), as unit vectors; ``c`` is the correlation
of two of them. A frame ``m`` between ``s`` and ``e`` is fitted as the blend ``alpha * s + beta *
e``: its **blend weight** is the share of ``e`` (of the raw thumbnails, each end's part divided
by how much its own scene decorrelates by motion over the same distance, measured outside the
span), its **relative fit** the explained share ``R^2`` over the share a dissolve of scenes
moving that much would explain. A second, motion-proof signal is the **detail energy**: the
squared luma gradient over the mean luma squared; fine detail of two different scenes does not
correlate, so a blend with weight ``a`` keeps ``(1 - a)^2`` of one's and ``a^2`` of the other's,
where a pan or fast motion keeps all of it.

A third, motion-proof signal is the **block-mean colours** (the mean colour of each block of a
2 x 2 or :data:`BLEND_GRID` x :data:`BLEND_GRID` grid): a blend mixes them linearly, and they
move little and smoothly with the scenes' motion.

* **candidates (cheap)**: on samples ``step`` frames apart (the cascade's pass-1 frames), for
  every half-length ``h`` of dissolves up to ``max_dissolve_seconds``, the triples ``s, m = s +
  h, e = s + 2h`` whose ends differ (``1 - c_se >= dissolve_end_change``) by
  ``dissolve_context_ratio`` x the change across the ``2h`` samples before or after (steady
  motion changes every window alike), whose middle is a blend (both weights >=
  ``dissolve_min_weight``, relative fit >= ``dissolve_min_fit``) and keeps at most
  :data:`CANDIDATE_SLACK` x ``dissolve_max_energy_ratio`` of the detail a blend would; and the
  triples whose block-mean colours step like a dissolve's (:func:`colour_candidates`: found
  where the scenes' own motion decorrelates the thumbnails). A candidate is validated only when
  its two samples' block colours differ by ``dissolve_min_colour_change`` and its own span's
  colours fit a blend (:func:`colour_blend`, ``R^2 >=`` :data:`CANDIDATE_COLOUR_FIT`).
* **validation (fine)**, best candidate first, at the full frame rate: a clamped linear ramp
  fitted to the blend weights between ends just outside the candidate, the ends moved out to a
  quarter of its length and refitted until they stay (:func:`locate`); then the span whose
  blend model best explains the detail energy near it (:func:`refine`); then the clamped ramp of
  the 2 x 2 block-mean colours around that span (:func:`colour_ramp`); then, from the colour
  ramp's ends (else the energy's), the span whose mix of two linearly drifting scenes best
  explains the 2 x 2 block-mean colours (:func:`blend_span`). Those spans are tried in that
  order (the blend's, the colour ramp's, the energy's); the first that passes is the dissolve.
  A span passes when the ends differ (``dissolve_end_change``, and ``dissolve_end_context`` x
  what either scene changes by itself over the same distance), the weights follow the straight
  ramp (RMS <= ``dissolve_max_ramp_error``), the relative fit is in ``[dissolve_min_fit,
  dissolve_max_fit]``, the middle keeps at most ``dissolve_max_energy_ratio`` x a blend's
  detail, the :data:`BLEND_GRID` x :data:`BLEND_GRID` block colours change by at least
  ``dissolve_min_colour_change`` and their drifting-blend model explains a share >=
  ``dissolve_min_colour_fit`` of their variance (:func:`colour_blend`), and it has between
  ``min_dissolve_seconds * fps - 2`` (at least 2) and ``max_dissolve_seconds * fps`` (at most
  :data:`MAX_DISSOLVE_FRAMES`) blended frames.

A lighting ramp or flicker leaves the normalised thumbnails and the detail energy alike (ends
that do not differ); a pan, zoom or fast motion keeps its detail, and changes the windows before
and after as much as the candidate's; a blob crossing or entering a zoomed-in, flat scene
changes a few blocks' colours, not every block's along one ramp.
"""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np

MAX_DISSOLVE_FRAMES: int = 120  # every transition stays under the 128-frame overlap of streamed windows
CANDIDATE_SLACK: float = 1.25  # candidates may keep this much more detail than a validated dissolve
CANDIDATE_COLOUR_FIT: float = 0.8  # least colour-blend R^2 (:func:`colour_blend`) of a candidate's own span to be validated
COLOUR_GRID: int = 2  # blocks per side of the block-mean colours that place a dissolve's ends
BLEND_GRID: int = 4  # blocks per side of the block-mean colours whose blend validates a dissolve
COLOUR_MIN_CHANGE: float = 4.0
COLOUR_MID_SHARE: float = 0.35  # a colour candidate's middle colours: at most this share of the step off the ends' mean
DETAIL_DIP: float = 0.75  # a colour candidate's middle keeps at most this share of its ends' mean detail energy  # RMS change of those colours (levels) below which the detail energy places them


class DissolveFrames(Protocol):
    """What the detector reads: the frames, and the cascade's cheap (small, cached) frame of each."""

    frames: np.ndarray

    def cheap(self, i: int) -> np.ndarray: ...


def small_frame(frame: np.ndarray, short_side: int) -> np.ndarray:
    """``frame`` at ``short_side`` px, area-averaged (never upscaled)."""
    h, w = frame.shape[:2]
    if short_side >= min(h, w):
        return frame
    scale = short_side / min(h, w)
    return cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


class Thumbnails:
    """High-passed, flattened thumbnails of frames (unit norm, with their norms) and their detail energy, cached."""

    def __init__(self, fr: DissolveFrames, size: int, step: int) -> None:
        self.fr, self.frames, self.size, self.step = fr, fr.frames, size, step
        self._z: dict[int, tuple[np.ndarray, float]] = {}
        self._energy: dict[int, tuple[float, float]] = {}
        self._colour: dict[tuple[int, int], np.ndarray] = {}

    def _make(self, i: int) -> tuple[np.ndarray, float]:
        v = small_frame(self.fr.cheap(i), self.size).astype(np.float32)
        v = (v - cv2.GaussianBlur(v, (0, 0), self.size / 4)).ravel()  # no gradients nor palette: structure only
        norm = float(np.linalg.norm(v))
        if norm <= 1e-3 * np.sqrt(v.size):
            return np.zeros_like(v), 0.0
        return v / norm, norm

    def z(self, i: int) -> np.ndarray:
        """Unit-norm float32 vector of frame ``i``'s high-passed thumbnail (zeros for a flat frame)."""
        if i not in self._z:
            self._z[i] = self._make(i)
        return self._z[i][0]

    def norm(self, i: int) -> float:
        """Norm of frame ``i``'s high-passed thumbnail (its contrast)."""
        self.z(i)
        return self._z[i][1]

    def stack(self, idx: list[int]) -> np.ndarray:
        return np.stack([self.z(i) for i in idx])

    def gradient(self, i: int) -> tuple[float, float]:
        """(mean squared luma gradient, mean luma) of frame ``i`` at the cascade's cheap size."""
        if i not in self._energy:
            g = cv2.cvtColor(self.fr.cheap(i), cv2.COLOR_RGB2GRAY).astype(np.float32)
            dy, dx = g[1:] - g[:-1], g[:, 1:] - g[:, :-1]
            grad = float(np.vdot(dy, dy)) / dy.size + float(np.vdot(dx, dx)) / dx.size
            self._energy[i] = grad, float(g.mean())
        return self._energy[i]

    def colour(self, i: int, grid: int = COLOUR_GRID) -> np.ndarray:
        """Mean colour of each of ``grid`` x ``grid`` blocks of frame ``i`` (cheap size), flattened."""
        if (i, grid) not in self._colour:
            size = (grid, grid)
            self._colour[i, grid] = cv2.resize(self.fr.cheap(i), size, interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
        return self._colour[i, grid]

    def energy(self, i: int) -> float:
        """Frame ``i``'s squared gradient over its mean luma squared: fine detail, which a blend of two
        scenes halves and a change of the lighting's gain leaves."""
        grad, mean = self.gradient(i)
        return grad / (mean + 8.0) ** 2


def blend_fit(c_sm: np.ndarray, c_me: np.ndarray, c_se: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(alpha, beta, R^2)`` of the least-squares fit ``m ~ alpha * s + beta * e`` of unit-norm vectors."""
    det = np.maximum(1.0 - c_se**2, 1e-6)
    alpha = (c_sm - c_se * c_me) / det
    beta = (c_me - c_se * c_sm) / det
    return alpha, beta, alpha * c_sm + beta * c_me


def ramp_fit(weights: np.ndarray, min_len: int) -> tuple[int, int, float]:
    """``(p, q, rms)``: the clamped ramp ``clip((t - p) / (q - p), 0, 1)`` closest to ``weights``, ``q - p >= min_len``.

    Every ``(p, q)`` at once, from prefix sums of ``w, w^2, t, t^2, w t``.
    """
    w = np.asarray(weights, np.float64)
    n = len(w)
    if n <= min_len:
        return 0, n - 1, float("inf")
    t = np.arange(n, dtype=np.float64)

    def prefix(x: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(x)])

    c_w2, c_w, c_t, c_t2, c_wt = prefix(w * w), prefix(w), prefix(t), prefix(t * t), prefix(w * t)
    c_one = prefix((w - 1.0) ** 2)
    p, q = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    valid = q - p >= min_len
    p, q = p[valid], q[valid]
    lo, hi = p + 1, q  # interior t in [p + 1, q - 1] -> prefix indices [lo, hi)
    span = (q - p).astype(np.float64)
    inner = (c_w2[hi] - c_w2[lo]
             - 2 * ((c_wt[hi] - c_wt[lo]) - p * (c_w[hi] - c_w[lo])) / span
             + ((c_t2[hi] - c_t2[lo]) - 2 * p * (c_t[hi] - c_t[lo]) + p * p * (hi - lo)) / span**2)
    err = c_w2[p + 1] + (c_one[n] - c_one[q]) + inner
    k = int(np.argmin(err))
    return int(p[k]), int(q[k]), float(np.sqrt(max(err[k], 0.0) / n))


def _decay(th: Thumbnails, ref: int, direction: int, length: int) -> np.ndarray:
    """Correlation of frame ``ref`` with the frames ``k = 0..length`` steps away in ``direction``
    (outside the transition: how fast its scene decorrelates by motion), floored at 0.2.

    Measured on the frames at multiples of ``th.step`` (the candidates' samples, already made) and
    interpolated; beyond the video's edge the last value holds.
    """
    n = len(th.frames)
    far = min(n - 1, ref + length) if direction > 0 else max(0, ref - length)
    lo, hi = sorted((ref, far))
    samples = [i for i in range(lo - lo % th.step, hi + 1, th.step) if lo <= i <= hi and i != ref]
    dist = np.array([0] + [abs(i - ref) for i in samples], np.float64)
    corr = np.array([1.0] + [float(th.z(i) @ th.z(ref)) for i in samples])
    order = np.argsort(dist)
    return np.clip(np.interp(np.arange(length + 1), dist[order], corr[order]), 0.2, 1.0)


def _weights(th: Thumbnails, left: int, right: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Blend weight (share of ``right``) and relative fit of every frame in ``[left, right]``, and the ends' correlation.

    The weights are of the raw (not normalised) thumbnails, each end's divided by how much its scene
    decorrelates by motion over the distance (:func:`_decay`), so moving scenes keep a straight ramp;
    the relative fit is the blend fit over the fit a dissolve of scenes moving that much would have.
    """
    z = th.stack(list(range(left, right + 1)))
    c_s, c_e = z @ th.z(left), z @ th.z(right)
    c_se = float(th.z(left) @ th.z(right))
    alpha, beta, fit = blend_fit(c_s, c_e, np.full_like(c_s, c_se))
    norms = np.array([th.norm(i) for i in range(left, right + 1)], np.float32)
    span = right - left
    rho_s, rho_e = _decay(th, left, -1, span), _decay(th, right, +1, span)[::-1]
    n_s, n_e = max(th.norm(left), 1e-6), max(th.norm(right), 1e-6)
    w_s, w_e = alpha * norms / n_s / rho_s, beta * norms / n_e / rho_e
    total = w_s + w_e
    weight = np.clip(np.where(np.abs(total) > 1e-3, w_e / np.where(np.abs(total) > 1e-3, total, 1.0), 0.5), -0.5, 1.5)
    a = np.clip(weight, 0.0, 1.0)
    part_s, part_e = ((1 - a) * n_s) ** 2, (a * n_e) ** 2
    expected = (part_s * rho_s**2 + part_e * rho_e**2) / np.maximum(part_s + part_e, 1e-6)
    return weight, fit / np.maximum(expected, 0.2), c_se


def _limits(cfg: "DissolveConfig", fps: float) -> tuple[int, int]:
    """Least and most blended frames of a dissolve at ``fps``."""
    most = min(MAX_DISSOLVE_FRAMES, int(round(cfg.max_dissolve_seconds * fps)))
    least = max(2, int(round(cfg.min_dissolve_seconds * fps)) - 2)
    return least, max(least, most)


def locate(th: Thumbnails, s: int, e: int, most: int) -> tuple[int, int]:
    """``(p, q)``: the last frame of the old scene and the first of the new one around candidate ends ``s < e``.

    A clamped ramp is fitted to the blend weights between two frames just outside the candidate;
    the ends are then moved to a quarter of the ramp's length outside it (outwards where the ramp
    reached an end) and the ramp refitted, until the ends stay put.
    """
    n = len(th.frames)
    left, right = max(0, s - 2), min(n - 1, e + 2)
    p, q = left, right
    for _ in range(6):
        weight, _, _ = _weights(th, left, right)
        p, q, _ = ramp_fit(weight, 2)
        p, q = p + left, q + left
        margin = max(2, (q - p) // 4)
        moved = max(0, p - margin), min(n - 1, q + margin)
        if moved == (left, right) or q - p > most + 1:
            break
        left, right = moved
    return p, q


def refine(th: Thumbnails, p0: int, q0: int) -> tuple[int, int]:
    """``(p, q)`` near ``(p0, q0)`` whose dissolve best explains the frames' squared gradients.

    A dissolve from ``p`` to ``q`` keeps ``(1 - a)^2`` of the old scene's and ``a^2`` of the new
    one's (``a = (t - p) / (q - p)``; fine detail of different scenes does not correlate), whatever
    the scenes' motion; the two levels are fitted by least squares for every ``(p, q)`` within a
    third of the span of ``(p0, q0)``.
    """
    n = len(th.frames)
    m = max(3, (q0 - p0) // 3)
    lo, hi = max(0, p0 - 2 * m), min(n - 1, q0 + 2 * m)
    t = np.arange(lo, hi + 1, dtype=np.float64)
    g = np.array([th.gradient(i)[0] for i in range(lo, hi + 1)])
    best, best_err = (p0, q0), np.inf
    for p in range(max(lo, p0 - m), min(hi, p0 + m) + 1):
        q = np.arange(max(p + 2, q0 - m), min(hi, q0 + m) + 1)
        if len(q) == 0:
            continue
        a = np.clip((t[None, :] - p) / (q[:, None] - p), 0.0, 1.0)
        u_a, u_b = (1 - a) ** 2, a**2
        saa, sbb, sab = (u_a * u_a).sum(1), (u_b * u_b).sum(1), (u_a * u_b).sum(1)
        ya, yb = (u_a * g).sum(1), (u_b * g).sum(1)
        det = np.maximum(saa * sbb - sab**2, 1e-9)
        level_a, level_b = (ya * sbb - yb * sab) / det, (yb * saa - ya * sab) / det
        err = ((level_a[:, None] * u_a + level_b[:, None] * u_b - g[None, :]) ** 2).sum(1)
        k = int(np.argmin(err))
        if err[k] < best_err:
            best, best_err = (p, int(q[k])), float(err[k])
    return best


def colour_ramp(th: Thumbnails, p0: int, q0: int) -> tuple[int, int] | None:
    """``(p, q)``: the clamped ramp of the block-mean colours (:meth:`Thumbnails.colour`) around ``(p0, q0)``.

    A blend mixes the colours linearly, and block means barely move with the scenes' motion or
    detail: each frame's colours are projected on the change between the first and the last three
    frames of a window half the span wider on each side, and :func:`ramp_fit` places the ends.
    None when those colours change by less than :data:`COLOUR_MIN_CHANGE` (RMS, levels).
    """
    n = len(th.frames)
    pad = max(3, (q0 - p0) // 2)
    left, right = max(0, p0 - pad), min(n - 1, q0 + pad)
    c = np.stack([th.colour(i) for i in range(left, right + 1)])
    c_s, c_e = np.median(c[:3], 0), np.median(c[-3:], 0)
    d = c_e - c_s
    change = float(d @ d)
    if change < COLOUR_MIN_CHANGE**2 * len(d):
        return None
    p, q, _ = ramp_fit((c - c_s) @ d / change, 2)
    return p + left, q + left


def _residuals(basis: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Residual sum of squares of the least-squares fit of ``y`` (T, D) on each ``basis[i]`` (T, k)."""
    gram = np.einsum("qtk,qtl->qkl", basis, basis) + 1e-9 * np.eye(basis.shape[2])
    proj = np.einsum("qtk,td->qkd", basis, y)
    return float((y * y).sum()) - np.einsum("qkd,qkd->q", np.linalg.solve(gram, proj), proj)


def blend_span(th: Thumbnails, p0: int, q0: int, grid: int = COLOUR_GRID) -> tuple[int, int]:
    """``(p, q)`` near ``(p0, q0)`` whose blend of two drifting scenes best explains the block-mean colours.

    The block means of frame ``t`` are modelled as ``(1 - a) (S + (t - p) dS) + a (E + (t - q) dE)``
    with ``a = clip((t - p) / (q - p), 0, 1)``: each scene's colours drift linearly with its motion
    (the old scene's extrapolated into the span, the new one's back into it), the dissolve mixes
    them; ``S, dS, E, dE`` are fitted by least squares for every ``(p, q)`` within a third of the
    span of ``(p0, q0)``, over a window two thirds of the span wider on each side.
    """
    n = len(th.frames)
    m = max(3, (q0 - p0) // 3)
    lo, hi = max(0, p0 - 2 * m), min(n - 1, q0 + 2 * m)
    c = np.stack([th.colour(i, grid) for i in range(lo, hi + 1)])
    t = np.arange(lo, hi + 1, dtype=np.float64)
    best, best_err = (p0, q0), np.inf
    for p in range(max(lo, p0 - m), min(hi, p0 + m) + 1):
        q = np.arange(max(p + 2, q0 - m), min(hi, q0 + m) + 1)
        if len(q) == 0:
            continue
        a = np.clip((t[None, :] - p) / (q[:, None] - p), 0.0, 1.0)
        drift_s, drift_e = (t[None, :] - p) / len(t), (t[None, :] - q[:, None]) / len(t)
        err = _residuals(np.stack([1 - a, a, (1 - a) * drift_s, a * drift_e], -1), c)
        k = int(np.argmin(err))
        if err[k] < best_err:
            best, best_err = (p, int(q[k])), float(err[k])
    return best


def evidence(th: Thumbnails, p: int, q: int) -> dict[str, float]:
    """What validates a dissolve of the frames strictly between ``p`` and ``q`` (module doc).

    ``end_change`` (1 - correlation of the ends), ``end_context`` (that over the least change
    either scene makes by itself over the same distance, outside the span), ``ramp_error`` (RMS of the blend weights about the
    straight ramp), ``fit`` (mean blend fit inside), ``energy_ratio`` (edge energy of the middle
    frames over what a blend of the ends would keep).
    """
    n = len(th.frames)
    weight, fit, c_se = _weights(th, p, q)
    ramp = np.arange(q - p + 1, dtype=np.float32) / (q - p)
    e_s = float(np.median([th.energy(i) for i in range(max(0, p - 2), p + 1)]))
    e_e = float(np.median([th.energy(i) for i in range(q, min(n, q + 3))]))
    middle = [k for k, a in enumerate(ramp) if 0.3 <= a <= 0.7] or [len(ramp) // 2]
    ratios = [th.energy(p + k) / max((1 - ramp[k]) ** 2 * e_s + ramp[k] ** 2 * e_e, 1e-6) for k in middle]
    own = min(1.0 - _decay(th, p, -1, q - p)[-1], 1.0 - _decay(th, q, +1, q - p)[-1])
    colour_change, colour_fit = colour_blend(th, p, q)
    return {"end_change": 1.0 - c_se, "end_context": float((1.0 - c_se) / max(own, 0.05)),
            "ramp_error": float(np.sqrt(((weight - ramp) ** 2).mean())), "fit": float(fit[1:-1].mean()),
            "energy_ratio": float(np.mean(ratios)), "colour_change": colour_change, "colour_fit": colour_fit}


def colour_blend(th: Thumbnails, p: int, q: int) -> tuple[float, float]:
    """``(change, R^2)`` of the :data:`BLEND_GRID` x :data:`BLEND_GRID` block-mean colours across the span ``(p, q)``.

    ``change``: RMS over blocks of the colour change (levels, the channels' squares summed) between
    the medians of the three frames at either end of the window of :func:`blend_span`; ``R^2``: the
    share of the colours' variance in that window explained by its model of two drifting scenes
    mixed by the ramp from ``p`` to ``q``. A dissolve changes every block's colours along one
    ramp; a blob crossing or entering changes a few blocks, along no common ramp.
    """
    n = len(th.frames)
    m = max(3, (q - p) // 3)
    lo, hi = max(0, p - 2 * m), min(n - 1, q + 2 * m)
    c = np.stack([th.colour(i, BLEND_GRID) for i in range(lo, hi + 1)])
    t = np.arange(lo, hi + 1, dtype=np.float64)
    a = np.clip((t - p) / (q - p), 0.0, 1.0)
    drift_s, drift_e = (t - p) / len(t), (t - q) / len(t)
    err = _residuals(np.stack([1 - a, a, (1 - a) * drift_s, a * drift_e], -1)[None], c)[0]
    total = float(((c - c.mean(0)) ** 2).sum())
    d = (np.median(c[-3:], 0) - np.median(c[:3], 0)).reshape(-1, 3)
    return float(np.sqrt((d**2).sum(1).mean())), float(1.0 - err / max(total, 1e-9))


def _accepts(ev: dict[str, float], cfg: "DissolveConfig") -> bool:
    """Whether :func:`evidence` meets the dissolve thresholds of ``cfg``."""
    return (ev["end_change"] >= cfg.dissolve_end_change and ev["end_context"] >= cfg.dissolve_end_context
            and ev["ramp_error"] <= cfg.dissolve_max_ramp_error
            and cfg.dissolve_min_fit <= ev["fit"] <= cfg.dissolve_max_fit
            and ev["energy_ratio"] <= cfg.dissolve_max_energy_ratio
            and ev["colour_change"] >= cfg.dissolve_min_colour_change and ev["colour_fit"] >= cfg.dissolve_min_colour_fit)


def validate(th: Thumbnails, cfg: "DissolveConfig", fps: float, s: int, e: int) -> tuple[int, int, float] | None:
    """The dissolve around candidate ends ``s < e`` as ``(start, end, score)``, or None (module doc).

    The ends placed by the block-mean colours are tried first, then those of the detail energy.
    """
    least, most = _limits(cfg, fps)
    by_energy = refine(th, *locate(th, s, e, most))
    by_colour = colour_ramp(th, *by_energy)
    by_blend = blend_span(th, *(by_colour or by_energy))
    spans = list(dict.fromkeys(sp for sp in (by_blend, by_colour, by_energy) if sp is not None))
    for p, q in spans:
        if least <= q - p - 1 <= most:
            ev = evidence(th, p, q)
            if _accepts(ev, cfg):
                return p + 1, q - 1, ev["fit"]
    return None


def candidates(th: Thumbnails, cfg: "DissolveConfig", fps: float) -> list[tuple[float, int, int]]:
    """``(score, s, e)`` of sample triples that may straddle a dissolve, best first (module doc)."""
    n = len(th.frames)
    stride = th.step
    grid = list(range(0, n, stride))
    _, most = _limits(cfg, fps)
    z = th.stack(grid)
    energy = np.array([th.energy(i) for i in grid])
    out: list[tuple[float, int, int]] = []
    for h in range(1, max(1, (most + 2) // (2 * stride)) + 1):
        if 2 * h >= len(grid):
            break
        c_h = np.einsum("ij,ij->i", z[:-h], z[h:])  # c(k, k + h)
        c_2h = np.einsum("ij,ij->i", z[: -2 * h], z[2 * h :])  # c(k, k + 2h)
        k = np.arange(len(c_2h))
        change = 1.0 - c_2h
        before = np.where(k >= 2 * h, change[np.maximum(k - 2 * h, 0)], np.inf)
        after = np.where(k + 2 * h < len(change), change[np.minimum(k + 2 * h, len(change) - 1)], np.inf)
        context = np.minimum(before, after)
        context = np.where(np.isinf(context), 0.0, context)
        alpha, beta, fit = blend_fit(c_h[k], c_h[k + h], c_2h)
        rho_s = np.where(k >= h, c_h[np.maximum(k - h, 0)], 1.0)  # the scenes' own decorrelation over h samples
        rho_e = np.where(k + 3 * h < len(c_h), c_h[np.minimum(k + 2 * h, len(c_h) - 1)], 1.0)
        fit = fit / np.maximum(0.5 * (np.clip(rho_s, 0, 1) ** 2 + np.clip(rho_e, 0, 1) ** 2), 0.2)
        a = np.clip(beta / np.maximum(alpha + beta, 1e-3), 0.0, 1.0)
        kept = (1 - a) ** 2 * energy[k] + a**2 * energy[k + 2 * h]  # the detail a blend of the ends keeps
        excess = energy[k + h] / np.maximum(kept, 1e-9)
        ok = ((excess <= CANDIDATE_SLACK * cfg.dissolve_max_energy_ratio) & (change >= cfg.dissolve_end_change)
              & (change >= cfg.dissolve_context_ratio * context)
              & (np.minimum(alpha, beta) >= cfg.dissolve_min_weight) & (fit >= cfg.dissolve_min_fit))
        out += [(float(fit[i] * change[i]), grid[i], grid[i + 2 * h]) for i in np.flatnonzero(ok)]
    return sorted(out, reverse=True)


def colour_candidates(th: Thumbnails, cfg: "DissolveConfig", fps: float) -> list[tuple[float, int, int]]:
    """``(score, s, e)`` of sample triples whose block-mean colours step like a dissolve's, best first (module doc).

    On the samples of :func:`candidates`, the :data:`BLEND_GRID` x :data:`BLEND_GRID` block-mean
    colours change from ``s`` to ``e = s + 2h`` by at least ``dissolve_min_colour_change`` (RMS over
    blocks) and ``dissolve_context_ratio`` x their change over the ``2h`` samples before or after,
    the middle's are within :data:`COLOUR_MID_SHARE` of that change from the ends' mean, and the
    middle keeps at most :data:`DETAIL_DIP` of the ends' mean detail energy (a blend near its
    middle keeps about half of it). Found where the scenes' own motion decorrelates the thumbnails.
    """
    n = len(th.frames)
    grid = list(range(0, n, th.step))
    _, most = _limits(cfg, fps)
    colours = np.stack([th.colour(i, BLEND_GRID) for i in grid]).reshape(len(grid), -1, 3)
    energy = np.array([th.energy(i) for i in grid])

    def dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.sqrt(((x - y) ** 2).sum(-1).mean(-1))

    out: list[tuple[float, int, int]] = []
    for h in range(1, max(1, (most + 2) // (2 * th.step)) + 1):
        if 2 * h >= len(grid):
            break
        k = np.arange(len(grid) - 2 * h)
        step = dist(colours[k + 2 * h], colours[k])
        before = np.where(k >= 2 * h, dist(colours[k], colours[np.maximum(k - 2 * h, 0)]), np.inf)
        last = len(grid) - 1
        after = np.where(k + 4 * h <= last, dist(colours[np.minimum(k + 4 * h, last)], colours[k + 2 * h]), np.inf)
        context = np.minimum(before, after)
        context = np.where(np.isinf(context), 0.0, context)
        middle = dist(colours[k + h], 0.5 * (colours[k] + colours[k + 2 * h]))
        dip = energy[k + h] / np.maximum(0.5 * (energy[k] + energy[k + 2 * h]), 1e-9)
        ok = ((step >= cfg.dissolve_min_colour_change) & (step >= cfg.dissolve_context_ratio * context)
              & (middle <= COLOUR_MID_SHARE * step) & (dip <= DETAIL_DIP))
        out += [(float(step[i]) / 100.0, grid[i], grid[i + 2 * h]) for i in np.flatnonzero(ok)]
    return sorted(out, reverse=True)


def detect_dissolves(fr: DissolveFrames, cfg: "DissolveConfig", fps: float) -> list[tuple[int, int, float]]:
    """Validated, disjoint dissolves ``(start, end, score)`` (first and last blended frame), sorted.

    Candidates are taken every ``step`` frames, or more often when the shortest dissolve is shorter.
    """
    stride = min(cfg.step, max(1, int(cfg.min_dissolve_seconds * fps)))
    th = Thumbnails(fr, cfg.dissolve_size, stride)
    found: list[tuple[int, int, float]] = []
    tried: list[tuple[int, int]] = []
    for _, s, e in sorted(candidates(th, cfg, fps) + colour_candidates(th, cfg, fps), reverse=True):
        mid = (s + e) // 2
        if any(a <= mid <= b for a, b in tried):
            continue
        tried.append((s, e))
        step = (th.colour(e, BLEND_GRID) - th.colour(s, BLEND_GRID)).reshape(-1, 3)
        if np.sqrt((step**2).sum(1).mean()) < cfg.dissolve_min_colour_change:
            continue  # the two samples' block colours (already made) barely differ
        change, fit = colour_blend(th, s, e)  # the candidate's own ramp, before placing its ends
        if change < cfg.dissolve_min_colour_change or fit < CANDIDATE_COLOUR_FIT:
            continue
        got = validate(th, cfg, fps, s, e)
        if got is not None and not any(got[0] <= b + 1 and a - 1 <= got[1] for a, b, _ in found):
            found.append(got)
    return sorted(found)


class DissolveConfig(Protocol):
    """The dissolve fields of :class:`data_curation.cuts.CutDetectorConfig`."""

    step: int
    dissolve_size: int
    min_dissolve_seconds: float
    max_dissolve_seconds: float
    dissolve_end_change: float
    dissolve_context_ratio: float
    dissolve_end_context: float
    dissolve_min_weight: float
    dissolve_min_fit: float
    dissolve_max_fit: float
    dissolve_max_ramp_error: float
    dissolve_max_energy_ratio: float
    dissolve_min_colour_change: float
    dissolve_min_colour_fit: float
