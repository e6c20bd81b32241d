"""Clip spans from transitions: the scenes between them, trimmed, capped and split into clips.

:func:`split_clips_frames` splits a whole video at once; :class:`ClipCutter` gives the same spans
one by one as transitions arrive in order (the streamed analysis of :mod:`data_curation.analysis`).
"""

from __future__ import annotations

import math

import numpy as np

from data_curation.cuts import Transition
from data_curation.records import ClipSpan


def clip_frame_limits(fps: float, min_seconds: float, max_seconds: float | None) -> tuple[int, int | None]:
    """``(min_frames, max_frames)`` of clips at ``fps``: ``ceil(min_seconds * fps)`` (at least 1) and
    ``floor(max_seconds * fps)`` (None when ``max_seconds`` is None: no limit)."""
    if not fps > 0 or min_seconds < 0:
        raise ValueError(f"need fps > 0 and min_seconds >= 0, got {fps}, {min_seconds}")
    min_frames = max(1, math.ceil(min_seconds * fps - 1e-9))
    max_frames = None if max_seconds is None else math.floor(max_seconds * fps + 1e-9)
    if max_frames is not None and max_frames < min_frames:
        raise ValueError(f"max_seconds={max_seconds} is shorter than min_seconds={min_seconds} at {fps} fps")
    return min_frames, max_frames


def split_clips_frames(
    num_frames: int, transitions: list[Transition], min_frames: int, max_frames: int | None, margin_frames: int = 1
) -> list[ClipSpan]:
    """Scenes between transitions as clip spans, with lengths in frames.

    Every transition frame, and ``margin_frames`` more on each side of a transition, is excluded
    (video edges get no margin). Scenes shorter than ``min_frames`` are dropped; longer than
    ``max_frames`` (None: no limit) are cut into consecutive ``max_frames`` clips, a remainder
    shorter than ``min_frames`` dropped. Spans are sorted, disjoint and inside ``[0, num_frames)``.
    """
    if num_frames < 0 or min_frames < 1 or margin_frames < 0:
        raise ValueError(
            f"need num_frames >= 0, min_frames >= 1, margin_frames >= 0; got {num_frames}, {min_frames}, {margin_frames}"
        )
    if max_frames is not None and max_frames < min_frames:
        raise ValueError(f"max_frames ({max_frames}) must be >= min_frames ({min_frames})")
    free = np.ones(num_frames, bool)
    for t in transitions:
        free[max(0, t.start - margin_frames) : max(0, t.end + margin_frames + 1)] = False
    spans: list[ClipSpan] = []
    i = 0
    while i < num_frames:
        if not free[i]:
            i += 1
            continue
        j = i
        while j < num_frames and free[j]:
            j += 1
        start = i
        if max_frames is not None:
            while j - start >= max_frames:
                spans.append(ClipSpan(start, start + max_frames))
                start += max_frames
        if j - start >= min_frames:
            spans.append(ClipSpan(start, j))
        i = j
    return spans


def split_clips(
    num_frames: int,
    transitions: list[Transition],
    fps: float,
    min_seconds: float,
    max_seconds: float | None,
    margin_frames: int = 1,
) -> list[ClipSpan]:
    """:func:`split_clips_frames` with lengths in seconds (:func:`clip_frame_limits`)."""
    min_frames, max_frames = clip_frame_limits(fps, min_seconds, max_seconds)
    return split_clips_frames(num_frames, transitions, min_frames, max_frames, margin_frames)


class ClipCutter:
    """Clip spans from transitions given in order of start, emitted as soon as they are final.

    Same spans as :func:`split_clips_frames`: scenes between transitions minus
    ``margin`` frames either side, cut into consecutive ``max_frames`` clips (None: no limit), pieces
    shorter than ``min_frames`` dropped.
    """

    def __init__(self, min_frames: int, max_frames: int | None, margin: int) -> None:
        if min_frames < 1 or margin < 0 or (max_frames is not None and max_frames < min_frames):
            raise ValueError(f"need min_frames >= 1, margin >= 0, max_frames >= min_frames; "
                             f"got {min_frames}, {max_frames}, {margin}")
        self.min_frames, self.max_frames, self.margin = min_frames, max_frames, margin
        self.scene_start = 0  # first frame not yet in a clip or excluded

    def _close(self, end: int) -> list[ClipSpan]:
        spans, start = [], self.scene_start
        if self.max_frames is not None:
            while end - start >= self.max_frames:
                spans.append(ClipSpan(start, start + self.max_frames))
                start += self.max_frames
        if end - start >= self.min_frames:
            spans.append(ClipSpan(start, end))
        return spans

    def transition(self, t: Transition) -> list[ClipSpan]:
        """The clips of the scene that ``t`` ends."""
        spans = self._close(t.start - self.margin) if t.start - self.margin > self.scene_start else []
        self.scene_start = max(self.scene_start, t.end + self.margin + 1)
        return spans

    def advance(self, frontier: int) -> list[ClipSpan]:
        """Full-length clips that no transition starting at or after ``frontier`` can reach."""
        spans: list[ClipSpan] = []
        if self.max_frames is None:
            return spans
        while self.scene_start + self.max_frames <= frontier - self.margin:
            spans.append(ClipSpan(self.scene_start, self.scene_start + self.max_frames))
            self.scene_start += self.max_frames
        return spans

    def finish(self, num_frames: int) -> list[ClipSpan]:
        """The last scene's clips (the video's end has no margin)."""
        spans = self._close(num_frames) if num_frames > self.scene_start else []
        self.scene_start = max(self.scene_start, num_frames)
        return spans
