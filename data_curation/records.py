"""The records every curation stage shares: what a video is, what a clip is, what a scorer returns.

A curation run turns each input file into a :class:`VideoInfo` (probe), a list of
:class:`ClipSpan` (cut detection and splitting), and for each span a :class:`Clip` handed to
every :class:`Scorer`; the scores, the filter decisions and any :class:`CurationError` end up
as rows of the manifest (:data:`MANIFEST_COLUMNS`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

# Error codes carried by manifest rows of inputs that could not be curated. A bad input is a row,
# never a crash.
ERROR_CODES: dict[str, str] = {
    "missing": "the file does not exist",
    "empty_file": "the file has 0 bytes",
    "not_a_video": "no decoder recognises the file as a video (text, image, random bytes)",
    "no_video_stream": "the container has no video stream",
    "truncated": "the file ends before the container or stream says it should",
    "decode_error": "the decoders failed on the file",
    "timeout": "the decoder delivered no frame within decode_timeout_s (a hung file system or decoder)",
    "scorer_error": "a scorer raised on a clip of this file",
    "internal_error": "an unexpected exception (a bug: please report it with the message)",
}


class CurationError(Exception):
    """An input that cannot be curated; ``code`` is a key of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown curation error code {code!r}; known: {sorted(ERROR_CODES)}")
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


def video_id(relative_path: str) -> str:
    """Stable id of an input: 16 hex digits of the SHA-1 of its path relative to the input root."""
    return hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:16]


def clip_id(vid: str, index: int) -> str:
    """Stable id of the ``index``-th clip cut from video ``vid``."""
    return f"{vid}_{index:04d}"


@dataclass(frozen=True)
class VideoInfo:
    """What probing a file tells (no full decode): the ``probe`` stage's output."""

    path: str
    size_bytes: int
    duration_s: float
    fps: float
    num_frames: int
    width: int
    height: int
    codec: str
    bits_per_pixel: float  # bitrate / (width * height * fps); low values mean heavy compression

    def as_row(self) -> dict[str, Any]:
        return {
            "duration_s": self.duration_s,
            "fps": self.fps,
            "num_frames": self.num_frames,
            "width": self.width,
            "height": self.height,
            "codec": self.codec,
            "bits_per_pixel": self.bits_per_pixel,
            "size_bytes": self.size_bytes,
        }


@dataclass(frozen=True)
class ClipSpan:
    """Frames ``[start, end)`` of a source video (end exclusive), cut frames already excluded."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"a clip span needs 0 <= start < end, got [{self.start}, {self.end})")

    @property
    def num_frames(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class StillsRequest:
    """Frames a scorer needs sharper than the analysis frames: short side ``short_side`` px (never
    upscaled past the source), one every ``every_s`` seconds of the source."""

    short_side: int
    every_s: float

    def __post_init__(self) -> None:
        if self.short_side < 8 or not self.every_s > 0:
            raise ValueError(f"need short_side >= 8 and every_s > 0, got {self.short_side}, {self.every_s}")


@dataclass
class Clip:
    """One clip handed to the scorers.

    ``frames``: uint8 ``(T, H, W, 3)`` RGB, the span's frames at the source frame rate, decoded at
    the analysis resolution (short side ``analysis_short_side`` of the config). ``fps`` is the
    source frame rate, so a scorer wanting 2 fps takes every ``round(fps / 2)``-th frame.
    ``caption``: the caption that came with the data, or ``None``. ``stills``: clip frame index ->
    uint8 RGB frame at the resolution a scorer's :class:`StillsRequest` asked for (the pipeline
    fills it with the frames of its stills grid inside the span; empty when nobody asked).
    """

    video_id: str
    index: int
    source: str
    span: ClipSpan
    fps: float
    frames: np.ndarray
    caption: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    stills: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def clip_id(self) -> str:
        return clip_id(self.video_id, self.index)

    @property
    def start_s(self) -> float:
        return self.span.start / self.fps

    @property
    def end_s(self) -> float:
        return self.span.end / self.fps


Score = float | int | bool | str | None


@runtime_checkable
class Scorer(Protocol):
    """A curation stage: a clip in, named scores out.

    ``name`` names the stage (``"motion"``, ``"text"``, ...); ``score`` returns a flat dict whose
    keys are manifest columns (``"motion_score"``, ``"text_ratio"``, ...). Scorers hold no state
    that changes between clips, so running them in any process or order gives the same numbers.
    ``available`` is False when the scorer needs files that are absent (then ``unavailable_reason``
    says which file is needed) and the pipeline skips it with one line. A scorer may also have a
    ``stills`` attribute (a :class:`StillsRequest`): the pipeline then fills ``Clip.stills``.
    """

    name: str

    @property
    def available(self) -> bool: ...

    @property
    def unavailable_reason(self) -> str: ...

    def score(self, clip: Clip) -> dict[str, Score]: ...


# Manifest: one parquet row per input ("video") and per clip ("clip"). Scorer columns are added
# by name; these are the fixed ones.
MANIFEST_COLUMNS: dict[str, str] = {
    "row_type": "'video' or 'clip'",
    "video_id": "stable id of the input (see video_id)",
    "clip_id": "stable id of the clip, null on video rows",
    "source": "input path relative to the input root",
    "clip_index": "index of the clip within its video, null on video rows",
    "start_frame": "first source frame of the clip",
    "end_frame": "one past the last source frame of the clip",
    "start_s": "clip start in seconds",
    "end_s": "clip end in seconds",
    "caption": "caption carried with the data or produced by the captioner",
    "kept": "True when the clip passed every filter (video rows: at least one clip kept)",
    "dropped_by": "name of the first filter that removed the row, null when kept",
    "dropped_by_all": "comma-separated names of every filter that would remove the row",
    "error_code": "a key of ERROR_CODES, null when fine",
    "error_message": "the error, in words",
    "shard": "name of the shard holding the kept clip",
    "split": "'train' (shards/) or 'heldout' (heldout/, the validation split) for kept clips, null otherwise",
    "motion_bucket_id": "SVD motion bucket 0..255 from motion_score (data_curation.scorers.motion.motion_bucket_id)",
}
