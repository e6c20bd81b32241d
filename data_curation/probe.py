"""Probing inputs from container metadata (no full decode) and the cheap prefilters that follow.

The SVD paper (Blattmann et al. 2023, Sec. 3 / App. E) starts curation from what is known without
decoding: duration, frame rate, resolution, aspect ratio and bitrate. :func:`probe_video` reads them
with PyAV; :func:`prefilter` drops inputs no later stage could use (too short/long, too few fps,
extreme aspect ratios, tiny frames, starved bitrates). Every failure is a
:class:`~data_curation.records.CurationError` with a code, never another exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_curation.records import CurationError, VideoInfo

PREFILTER_NAMES: tuple[str, ...] = ("too_short", "too_long", "low_fps", "aspect_ratio", "small", "low_bits_per_pixel")

# demuxers that read single still images: such inputs are "not a video"
_IMAGE_FORMATS = frozenset({"image2", "image2pipe", "apng"})


@dataclass(frozen=True)
class PrefilterConfig:
    """Thresholds of :func:`prefilter` (``None`` turns a rule off where allowed).

    ``max_aspect_ratio`` is long side / short side (2.5 keeps 16:9 and 2.39:1, drops banners).
    ``min_bits_per_pixel``: bitrate / (width * height * fps); unknown bitrates (0.0) pass.
    """

    min_duration_s: float = 1.0
    max_duration_s: float | None = 600.0
    min_fps: float = 8.0
    max_aspect_ratio: float = 2.5
    min_short_side: int = 64
    min_bits_per_pixel: float | None = None

    def __post_init__(self) -> None:
        if not self.min_duration_s >= 0:
            raise ValueError(f"min_duration_s must be >= 0, got {self.min_duration_s}")
        if self.max_duration_s is not None and not self.max_duration_s >= self.min_duration_s:
            raise ValueError(f"max_duration_s ({self.max_duration_s}) must be >= min_duration_s ({self.min_duration_s})")
        if not self.min_fps >= 0:
            raise ValueError(f"min_fps must be >= 0, got {self.min_fps}")
        if not self.max_aspect_ratio >= 1.0:
            raise ValueError(f"max_aspect_ratio is long/short side and must be >= 1, got {self.max_aspect_ratio}")
        if self.min_short_side < 0:
            raise ValueError(f"min_short_side must be >= 0, got {self.min_short_side}")
        if self.min_bits_per_pixel is not None and not self.min_bits_per_pixel >= 0:
            raise ValueError(f"min_bits_per_pixel must be >= 0 or None, got {self.min_bits_per_pixel}")


def prefilter(info: VideoInfo, cfg: PrefilterConfig) -> str | None:
    """Name of the first failing prefilter (order of :data:`PREFILTER_NAMES`), or None if all pass."""
    if info.duration_s < cfg.min_duration_s:
        return "too_short"
    if cfg.max_duration_s is not None and info.duration_s > cfg.max_duration_s:
        return "too_long"
    if info.fps < cfg.min_fps:
        return "low_fps"
    short, long = min(info.width, info.height), max(info.width, info.height)
    if short <= 0 or long / short > cfg.max_aspect_ratio:
        return "aspect_ratio"
    if short < cfg.min_short_side:
        return "small"
    if cfg.min_bits_per_pixel is not None and 0.0 < info.bits_per_pixel < cfg.min_bits_per_pixel:
        return "low_bits_per_pixel"
    return None


def _read_exact(f: Any, n: int) -> bytes | None:
    data = f.read(n)
    return data if len(data) == n else None


def _isobmff_truncated(path: Path, size: int) -> bool:
    """True when a top-level MP4/MOV box claims more bytes than the file has."""
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            f.seek(offset)
            head = _read_exact(f, 8)
            if head is None:
                return True
            box = int.from_bytes(head[:4], "big")
            if box == 1:  # 64-bit size follows the type
                large = _read_exact(f, 8)
                if large is None:
                    return True
                box = int.from_bytes(large, "big")
            elif box == 0:  # box runs to the end of the file
                return False
            if box < 8:
                return False  # not a box structure we understand: let the demuxer judge
            offset += box
        return offset > size


def _ebml_vint(f: Any, is_id: bool) -> int | None:
    first = _read_exact(f, 1)
    if first is None or first[0] == 0:
        return None
    length = 8 - first[0].bit_length() + 1
    rest = _read_exact(f, length - 1)
    if rest is None:
        return None
    value = first[0] if is_id else first[0] & ((1 << (8 - length)) - 1)
    for b in rest:
        value = (value << 8) | b
    if not is_id and value == (1 << (7 * length)) - 1:
        return -1  # "unknown size" (live streams)
    return value


def _matroska_truncated(path: Path, size: int) -> bool:
    """True when the Matroska/WebM Segment claims more bytes than the file has."""
    with open(path, "rb") as f:
        for expected in (0x1A45DFA3, 0x18538067):  # EBML header, then Segment
            element, length = _ebml_vint(f, True), _ebml_vint(f, False)
            if element != expected or length is None:
                return False
            if length == -1:
                return False
            if element == 0x18538067:
                return f.tell() + length > size
            f.seek(length, 1)
    return False


def container_truncated(path: str | Path, size: int | None = None) -> bool:
    """Cheap structural check: does the MP4/MOV or Matroska container say the file should be longer?"""
    path = Path(path)
    try:
        size = path.stat().st_size if size is None else size
        with open(path, "rb") as f:
            head = f.read(12)
        if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
            return _isobmff_truncated(path, size)
        if head[:4] == b"\x1a\x45\xdf\xa3":
            return _matroska_truncated(path, size)
    except OSError:
        return False
    return False


def _is_attached_picture(stream: Any) -> bool:
    try:
        import av

        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except Exception:  # noqa: BLE001 - older PyAV: no Disposition flags; assume a real stream
        return False


def _rate(value: Any) -> float:
    try:
        rate = float(value) if value is not None else 0.0
    except (TypeError, ZeroDivisionError, ValueError):
        return 0.0
    return rate if math.isfinite(rate) and rate > 0 else 0.0


def _probe_open(path: Path, size_bytes: int) -> VideoInfo:
    import av

    try:
        container = av.open(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - PyAV raises many FFmpegError subclasses
        raise CurationError("not_a_video", f"'{path}': PyAV cannot open it ({type(err).__name__}: {err})") from None
    with container:
        fmt = container.format.name if container.format is not None else ""
        if fmt in _IMAGE_FORMATS or fmt.endswith("_pipe"):
            raise CurationError("not_a_video", f"'{path}': a still image (container format {fmt!r})")
        streams = [s for s in container.streams.video if not _is_attached_picture(s)]
        if not streams:
            kinds = sorted({s.type for s in container.streams})
            raise CurationError("no_video_stream", f"'{path}': container {fmt!r} has no video stream (streams: {kinds})")
        stream = streams[0]
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise CurationError("not_a_video", f"'{path}': the video stream has no frame size ({width}x{height})")
        fps = _rate(stream.average_rate) or _rate(stream.guessed_rate) or _rate(stream.base_rate)
        duration = 0.0
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        if duration <= 0 and container.duration is not None:
            duration = container.duration / av.time_base
        frames = int(stream.frames or 0)
        if frames <= 0 and duration > 0 and fps > 0:
            frames = int(round(duration * fps))
        if duration <= 0 and frames > 0 and fps > 0:
            duration = frames / fps
        bit_rate = int(stream.bit_rate or 0) or int(container.bit_rate or 0)
        bpp = bit_rate / (width * height * fps) if bit_rate > 0 and fps > 0 else 0.0
        codec = str(ctx.name or "")
    return VideoInfo(
        path=str(path),
        size_bytes=size_bytes,
        duration_s=float(max(duration, 0.0)),
        fps=float(fps),
        num_frames=int(max(frames, 0)),
        width=width,
        height=height,
        codec=codec,
        bits_per_pixel=float(bpp),
    )


def probe_video(path: str | Path) -> VideoInfo:
    """Container metadata of ``path`` as a :class:`VideoInfo`, without decoding the video.

    ``num_frames`` comes from the stream header, else ``round(duration * fps)``;
    ``bits_per_pixel`` is the stream (else container) bitrate / (width * height * fps), 0.0 when
    unknown. Raises :class:`CurationError` only: ``missing``, ``empty_file``, ``truncated`` (an
    MP4/MOV box or Matroska segment extends past the end of the file), ``not_a_video`` (text,
    random bytes, a still image), ``no_video_stream`` (e.g. audio only).
    """
    path = Path(path)
    try:
        if not path.exists():
            raise CurationError("missing", f"'{path}' does not exist")
        if not path.is_file():
            raise CurationError("not_a_video", f"'{path}' is not a regular file")
        size_bytes = path.stat().st_size
        if size_bytes == 0:
            raise CurationError("empty_file", f"'{path}' has 0 bytes")
        if container_truncated(path, size_bytes):
            raise CurationError("truncated", f"'{path}' ({size_bytes} bytes) ends before its container says it should")
        return _probe_open(path, size_bytes)
    except CurationError:
        raise
    except OSError as err:
        raise CurationError("missing" if not path.exists() else "decode_error", f"'{path}': {err}") from None
    except Exception as err:  # noqa: BLE001 - the contract: nothing but CurationError leaves probe
        raise CurationError("decode_error", f"'{path}': probing failed ({type(err).__name__}: {err})") from None
