"""Frames of a training clip: which ones (a temporal window at a stride) and at what size (H x W).

SVD pretrains video at 256x384 and fine-tunes at 320x576 and 576x1024 (Blattmann et al., 2023), so a
training size is ``(height, width)``; a single int is a square. Frames are resized to cover the size and centre-cropped, as the official
sampling script prepares its conditioning image.

A clip's frames are a window of ``num_frames`` taken every ``stride`` source frames, starting at
the first frame or at a random one. A stride drawn from several lets one clip teach several frame
rates; the conditioning ``fps_id`` is then the rate of the frames the model sees,
``round(source_fps / stride) - 1`` (SVD's ``fps_id`` = frames per second - 1). Random draws come
from ``(seed, epoch, clip key)``, so a resumed run sees the same windows as an uninterrupted one.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

CLIP_STARTS = ("first", "random")


def frame_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int (square) or a pair; both positive."""
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(v) for v in size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"a frame size is an int or [height, width] of positive ints, got {size!r}")
    return hw  # type: ignore[return-value]


def size_record(size: int | Sequence[int]) -> int | list[int]:
    """The size as written in manifests: an int when square (as caches made before sizes had two sides)."""
    h, w = frame_size(size)
    return h if h == w else [h, w]


def resize_center_crop(frames: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Resize ``(..., H, W, 3)`` uint8 frames to cover ``size`` (keeping their aspect), then crop the centre."""
    th, tw = frame_size(size)
    h, w = frames.shape[-3:-1]
    if (h, w) == (th, tw):
        return frames
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    flat = frames.reshape(-1, h, w, 3)
    out = np.stack([cv2.resize(f, (nw, nh), interpolation=interp) for f in flat])
    top, left = (nh - th) // 2, (nw - tw) // 2
    return out[:, top : top + th, left : left + tw].reshape(*frames.shape[:-3], th, tw, 3)


@dataclass(frozen=True)
class FrameWindow:
    """``num_frames`` frames every ``stride`` (one of ``strides``), from the first frame or a random one."""

    num_frames: int
    strides: tuple[int, ...] = (1,)
    start: str = "first"

    def __post_init__(self) -> None:
        if self.num_frames < 1 or not self.strides or min(self.strides) < 1:
            raise ValueError(f"need num_frames >= 1 and strides >= 1, got {self.num_frames} and {self.strides}")
        if self.start not in CLIP_STARTS:
            raise ValueError(f"clip_start must be one of {CLIP_STARTS}, got {self.start!r}")

    @classmethod
    def of(cls, num_frames: int, stride: int | Sequence[int] = 1, start: str = "first") -> FrameWindow:
        strides = (int(stride),) if isinstance(stride, (int, np.integer)) else tuple(int(s) for s in stride)
        return cls(int(num_frames), strides, start)

    def span(self, stride: int) -> int:
        """Source frames a window at ``stride`` covers."""
        return (self.num_frames - 1) * stride + 1

    @property
    def frames_to_read(self) -> int | None:
        """How many leading frames to decode (None: all, for a random start)."""
        return self.span(max(self.strides)) if self.start == "first" else None

    def choose(self, available: int, seed: int, epoch: int, key: str) -> tuple[int, int] | None:
        """``(start, stride)`` for a clip of ``available`` frames; None if no stride fits."""
        fits = [s for s in self.strides if self.span(s) <= available]
        if not fits:
            return None
        if len(fits) == 1 and self.start == "first":
            return 0, fits[0]
        rng = np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])
        stride = fits[int(rng.integers(len(fits)))]
        start = 0 if self.start == "first" else int(rng.integers(available - self.span(stride) + 1))
        return start, stride

    def shortest(self) -> int:
        return self.span(min(self.strides))
