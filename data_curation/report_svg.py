"""SVG pieces of the curation report: stacked kept / dropped histograms with threshold lines, and boolean bars."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any, Protocol

# Plot geometry (SVG user units); the x axis maps [lo, hi] linearly onto [PLOT_X0, PLOT_X1].
SVG_W, SVG_H = 520, 190
PLOT_X0, PLOT_X1, PLOT_TOP, PLOT_BOTTOM = 48.0, 500.0, 26.0, 150.0
NUM_BINS = 20


class DrawnThresholds(Protocol):
    """A filter as drawn: its name and its ``(value, label)`` threshold lines."""

    name: str
    thresholds: list[tuple[float, str]]


def fmt_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def esc(v: Any) -> str:
    return html.escape(fmt_value(v) if not isinstance(v, str) else v, quote=True)


def axis_x(value: float, lo: float, hi: float) -> float:
    """x position (SVG units) of ``value`` on a histogram axis spanning [lo, hi]."""
    return PLOT_X0 + (value - lo) / (hi - lo) * (PLOT_X1 - PLOT_X0)


def axis_range(values: list[float], thresholds: list[float]) -> tuple[float, float]:
    """The axis of a histogram: min to max of the values and thresholds, widened when it is a point."""
    pts = list(values) + list(thresholds)
    lo, hi = min(pts), max(pts)
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.05, 0.5)
        lo, hi = lo - pad, hi + pad
    return lo, hi


def histogram_svg(column: str, pairs: list[tuple[float, bool]], specs: Sequence[DrawnThresholds], scope: str = "clip") -> str:
    """Stacked (kept / dropped) histogram of ``pairs`` = (value, kept) with threshold lines."""
    thresholds = [(v, s.name, label) for s in specs for v, label in s.thresholds]
    values = [v for v, _ in pairs]
    lo, hi = axis_range(values, [t for t, _, _ in thresholds])
    width = (hi - lo) / NUM_BINS
    kept = [0] * NUM_BINS
    dropped = [0] * NUM_BINS
    for v, k in pairs:
        i = min(int((v - lo) / width), NUM_BINS - 1)
        (kept if k else dropped)[i] += 1
    top = max([a + b for a, b in zip(kept, dropped)] + [1])
    scale = (PLOT_BOTTOM - PLOT_TOP) / top
    bw = (PLOT_X1 - PLOT_X0) / NUM_BINS
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="hist" width="{SVG_W}" height="{SVG_H}" '
             f'viewBox="0 0 {SVG_W} {SVG_H}" data-scope="{scope}" data-column="{esc(column)}" '
             f'data-lo="{lo!r}" data-hi="{hi!r}" '
             f'data-x0="{PLOT_X0}" data-x1="{PLOT_X1}" role="img" aria-label="histogram of {esc(column)}">']
    for i in range(NUM_BINS):
        x = PLOT_X0 + i * bw
        hk, hd = kept[i] * scale, dropped[i] * scale
        if hk:
            parts.append(f'<rect class="kept" x="{x:.2f}" y="{PLOT_BOTTOM - hk:.2f}" width="{bw - 1:.2f}" '
                         f'height="{hk:.2f}"><title>{kept[i]} kept</title></rect>')
        if hd:
            parts.append(f'<rect class="dropped" x="{x:.2f}" y="{PLOT_BOTTOM - hk - hd:.2f}" width="{bw - 1:.2f}" '
                         f'height="{hd:.2f}"><title>{dropped[i]} dropped</title></rect>')
    parts.append(f'<line class="axis" x1="{PLOT_X0}" y1="{PLOT_BOTTOM}" x2="{PLOT_X1}" y2="{PLOT_BOTTOM}"/>')
    for frac, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        v = lo + frac * (hi - lo)
        parts.append(f'<text class="tick" x="{axis_x(v, lo, hi):.2f}" y="{PLOT_BOTTOM + 16}" '
                     f'text-anchor="{anchor}">{esc(v)}</text>')
    parts.append(f'<text class="tick" x="{PLOT_X0 - 4}" y="{PLOT_TOP + 4}" text-anchor="end">{top}</text>')
    for n, (v, name, label) in enumerate(thresholds):
        x = axis_x(v, lo, hi)
        parts.append(f'<line class="threshold" data-value="{v!r}" data-filter="{esc(name)}" x1="{x:.3f}" '
                     f'y1="{PLOT_TOP - 8}" x2="{x:.3f}" y2="{PLOT_BOTTOM}"/>')
        anchor = "end" if x > (PLOT_X0 + PLOT_X1) / 2 else "start"
        dx = -3 if anchor == "end" else 3
        parts.append(f'<text class="threshold-label" x="{x + dx:.2f}" y="{PLOT_TOP - 10 + 11 * (n % 2)}" '
                     f'text-anchor="{anchor}">{esc(name)}: {esc(label)}</text>')
    parts.append(f'<text class="xlabel" x="{(PLOT_X0 + PLOT_X1) / 2}" y="{SVG_H - 4}" '
                 f'text-anchor="middle">{esc(column)}</text></svg>')
    return "".join(parts)


def bool_svg(column: str, pairs: list[tuple[bool, bool]]) -> str:
    """Two bars (False / True), each split into kept and dropped."""
    counts = {b: [sum(1 for v, k in pairs if v == b and k), sum(1 for v, k in pairs if v == b and not k)]
              for b in (False, True)}
    top = max([sum(c) for c in counts.values()] + [1])
    scale = (PLOT_BOTTOM - PLOT_TOP) / top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="hist bool" width="{SVG_W}" height="{SVG_H}" '
             f'viewBox="0 0 {SVG_W} {SVG_H}" data-scope="clip" data-column="{esc(column)}" role="img" '
             f'aria-label="counts of {esc(column)}">']
    for i, b in enumerate((False, True)):
        x = PLOT_X0 + 60 + i * 200
        hk, hd = counts[b][0] * scale, counts[b][1] * scale
        parts.append(f'<rect class="kept" x="{x}" y="{PLOT_BOTTOM - hk:.2f}" width="120" height="{hk:.2f}"/>')
        parts.append(f'<rect class="dropped" x="{x}" y="{PLOT_BOTTOM - hk - hd:.2f}" width="120" height="{hd:.2f}"/>')
        parts.append(f'<text class="tick" x="{x + 60}" y="{PLOT_BOTTOM + 16}" text-anchor="middle">{b}: '
                     f'{sum(counts[b])} ({counts[b][1]} dropped)</text>')
    parts.append(f'<line class="axis" x1="{PLOT_X0}" y1="{PLOT_BOTTOM}" x2="{PLOT_X1}" y2="{PLOT_BOTTOM}"/>')
    parts.append(f'<text class="xlabel" x="{(PLOT_X0 + PLOT_X1) / 2}" y="{SVG_H - 4}" '
                 f'text-anchor="middle">{esc(column)}</text></svg>')
    return "".join(parts)
