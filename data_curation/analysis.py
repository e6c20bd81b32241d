"""One pass over an input's frames: transitions on overlapping windows, clips as soon as they are final.

Memory stays bounded however long the video is: frames arrive in batches
(:func:`data_curation.frame_stream.stream_frames`), transitions are searched on windows of
``window_frames`` frames that overlap by ``overlap_frames`` (a window owns the transitions that
start in its middle part, at least ``overlap_frames / 2`` from either edge, so every transition
shorter than that is seen whole with context on both sides), and :class:`~data_curation.clip_spans.ClipCutter` hands out
each clip span as soon as no later transition can touch it. Frames older than both the current
window and the oldest unfinished clip are dropped, so at most about ``window_frames +
max_frames`` frames are held (``clips.max_seconds: null`` holds a whole scene).

The spans are exactly those :func:`data_curation.clip_spans.split_clips_frames` gives for the same
transitions; on a video shorter than one window the transitions are exactly
:func:`data_curation.cuts.detect_transitions`' on the whole video.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from data_curation.clip_spans import ClipCutter
from data_curation.cuts import Transition
from data_curation.frame_stream import FrameBatch
from data_curation.records import ClipSpan

WINDOW_FRAMES = 1024
OVERLAP_FRAMES = 256

Detect = Callable[[np.ndarray], list[Transition]]


class FrameBuffer:
    """Recent batches of frames by absolute index; :meth:`drop_before` frees the old ones."""

    def __init__(self) -> None:
        self.batches: deque[FrameBatch] = deque()

    @property
    def end(self) -> int:
        return self.batches[-1].end if self.batches else 0

    def add(self, batch: FrameBatch) -> None:
        if batch.start != self.end:
            raise ValueError(f"batches must be consecutive: expected frame {self.end}, got {batch.start}")
        self.batches.append(batch)

    def frames(self, start: int, end: int) -> np.ndarray:
        parts = [b.frames[max(start, b.start) - b.start : min(end, b.end) - b.start]
                 for b in self.batches if b.start < end and b.end > start]
        if not parts or sum(len(p) for p in parts) != end - start:
            raise ValueError(f"frames [{start}, {end}) are not buffered")
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def stills(self, start: int, end: int) -> dict[int, np.ndarray]:
        """Stills in ``[start, end)``, keyed by their index relative to ``start``."""
        return {i - start: s for b in self.batches if b.start < end and b.end > start
                for i, s in b.stills.items() if start <= i < end}

    def drop_before(self, index: int) -> None:
        while self.batches and self.batches[0].end <= index:
            self.batches.popleft()

    @property
    def held_frames(self) -> int:
        return sum(len(b.frames) for b in self.batches)


@dataclass
class Analysis:
    """What one pass over a video found: every transition, the frame count, the most frames held."""

    transitions: list[Transition]
    num_frames: int = 0
    peak_held_frames: int = 0


def merge_overlapping(transitions: Iterable[Transition]) -> list[Transition]:
    """Sorted transitions with overlapping or touching ones joined (the kind and score of the stronger)."""
    out: list[Transition] = []
    for t in sorted(transitions, key=lambda t: (t.start, t.end)):
        if out and t.start <= out[-1].end + 1 and (t.kind != "cut" or out[-1].kind != "cut" or t.start <= out[-1].end):
            prev = out[-1]
            strong = prev if prev.score >= t.score else t
            found_by = ",".join(sorted(set(prev.found_by.split(",")) | set(t.found_by.split(","))))
            out[-1] = Transition(prev.start, max(prev.end, t.end), strong.kind, strong.score, found_by)
        else:
            out.append(t)
    return out


def analyse_stream(
    batches: Iterable[FrameBatch],
    detect: Detect,
    cutter: ClipCutter,
    window_frames: int = WINDOW_FRAMES,
    overlap_frames: int = OVERLAP_FRAMES,
    result: Analysis | None = None,
) -> Iterator[tuple[ClipSpan, np.ndarray, dict[int, np.ndarray]]]:
    """Yield ``(span, frames, stills)`` for each clip in order; ``result`` collects the transitions.

    ``detect`` maps a window's frames to its transitions (window-relative frames). See the module doc.
    """
    if overlap_frames < 2 or overlap_frames % 2 or window_frames <= overlap_frames:
        raise ValueError(f"need an even overlap_frames >= 2 below window_frames, got {overlap_frames}, {window_frames}")
    result = result if result is not None else Analysis([])
    buffer = FrameBuffer()
    half, hop = overlap_frames // 2, window_frames - overlap_frames
    win = 0  # start of the next window

    def clips(spans: list[ClipSpan]) -> Iterator[tuple[ClipSpan, np.ndarray, dict[int, np.ndarray]]]:
        for span in spans:
            yield span, buffer.frames(span.start, span.end), buffer.stills(span.start, span.end)

    def window(start: int, end: int, last: bool) -> Iterator[tuple[ClipSpan, np.ndarray, dict[int, np.ndarray]]]:
        lo = start + half if start > 0 else 0
        hi = end if last else start + half + hop
        found = [Transition(t.start + start, t.end + start, t.kind, t.score, t.found_by)
                 for t in detect(buffer.frames(start, end))]
        for t in sorted((t for t in found if lo <= t.start < hi), key=lambda t: (t.start, t.end)):
            result.transitions.append(t)
            yield from clips(cutter.transition(t))
        yield from clips(cutter.advance(hi))

    for batch in batches:
        buffer.add(batch)
        result.peak_held_frames = max(result.peak_held_frames, buffer.held_frames)
        while buffer.end >= win + window_frames:
            yield from window(win, win + window_frames, last=False)
            win += hop
            buffer.drop_before(min(win, cutter.scene_start))
    n = buffer.end
    result.num_frames = n
    if n > 0:  # the last window: from the next window start (at least overlap_frames before the end) on
        yield from window(win, n, last=True)
    yield from clips(cutter.finish(n))
    result.transitions[:] = merge_overlapping(result.transitions)
