"""Decoding inputs for curation: a whole video at one size, one span for writing, or a span batch by batch.

The curation run itself streams the analysis frames (:mod:`data_curation.frame_stream`, built on
the helpers here) and writes each kept clip with :func:`iter_span`; :func:`decode_video` and
:func:`decode_span` decode everything asked for at once (benchmarks, tests, short videos).

decord resizes inside the decoder (the cheapest way; ``python -m bench.decode`` times both readers,
docs/benchmarks.md); PyAV is the fallback. Frames are never upscaled: a ``short_side`` at or above
the source's keeps the source size.

Known decord quirk: for a few output widths (8, 12, 16, 24, 48, 72 px seen) its in-decoder resize
fails a buffer-size check; then the frames are decoded at the source size and resized with OpenCV
(``INTER_AREA``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from data_curation.probe import container_truncated
from data_curation.records import CurationError

# fewer decoded frames than this fraction of the expected count means the file was cut off
TRUNCATED_FRACTION: float = 0.9

Size = tuple[int, int]  # (width, height)
Span = tuple[int, int]  # frames [start, end)


def target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """Output ``(width, height)`` with the short side ``short_side`` (aspect kept, never upscaled)."""
    if short_side is None or short_side >= min(width, height):
        return width, height
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1 or None, got {short_side}")
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, max(1, int(round(height * scale)))
    return max(1, int(round(width * scale))), short_side


def _short(err: BaseException, limit: int = 240) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CurationError("missing", f"'{path}' does not exist")
    if not path.is_file():
        raise CurationError("not_a_video", f"'{path}' is not a regular file")
    if path.stat().st_size == 0:
        raise CurationError("empty_file", f"'{path}' has 0 bytes")


def _declared_frames(container: Any, stream: Any) -> int:
    """Frames the header declares: the stream's count, else its duration x fps, else the container's."""
    import av

    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    declared = int(stream.frames or 0)
    if declared <= 0 and fps > 0:
        if stream.duration and stream.time_base:
            declared = int(round(float(stream.duration * stream.time_base) * fps))
        elif container.duration:
            declared = int(round(container.duration / av.time_base * fps))
    return max(declared, 0)


def _header(path: Path) -> tuple[Size | None, int]:
    """The first video stream's ``(width, height)`` (or None) and declared frame count (0 if unknown)."""
    try:
        import av

        with av.open(str(path), mode="r") as container:
            stream = container.streams.video[0]
            ctx = stream.codec_context
            size = (int(ctx.width), int(ctx.height)) if ctx.width > 0 and ctx.height > 0 else None
            return size, _declared_frames(container, stream)
    except Exception:  # noqa: BLE001 - the decoders below report the real error
        return None, 0


def _resize_all(frames: np.ndarray, size: Size) -> np.ndarray:
    w, h = size
    if frames.shape[1:3] == (h, w):
        return frames
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])


def _as_numpy(batch: Any) -> np.ndarray:
    # someone may have switched decord's global bridge to torch; accept anything array-like
    array = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    return np.ascontiguousarray(array, dtype=np.uint8)


def _decord_read(path: Path, size: Size | None, span: Span | None, threads: int) -> tuple[np.ndarray, float, int]:
    """decord: frames (of ``span`` or all), fps, and the frame count the container reports."""
    import decord

    def read(kwargs: dict[str, int]) -> tuple[np.ndarray, float, int]:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads, **kwargs)
        n = len(reader)
        if n == 0:
            raise RuntimeError("container reports 0 frames")
        start, end = span if span is not None else (0, n)
        if end > n:
            raise CurationError("truncated", f"'{path}' has {n} frames; frames [{start}, {end}) were asked for")
        frames = _as_numpy(reader.get_batch(list(range(start, end))))
        return frames, float(reader.get_avg_fps()), n

    if size is None:
        return read({})
    try:
        frames, fps, n = read({"width": size[0], "height": size[1]})
    except decord.DECORDError as err:
        if "DECORDArrayCopyFromTo" not in str(err):
            raise
        frames, fps, n = read({})  # decord's resize quirk (module doc): resize ourselves
        frames = _resize_all(frames, size)
    if frames.shape[1:3] != (size[1], size[0]):
        frames = _resize_all(frames, size)
    return frames, fps, n


def _pyav_read(path: Path, size: Size | None, span: Span | None) -> tuple[np.ndarray, float, int, str | None]:
    """PyAV, sequential: frames, fps, the declared frame count (0 if unknown) and a mid-stream error."""
    import av

    frames: list[np.ndarray] = []
    start, end = span if span is not None else (0, None)
    late_error: str | None = None
    with av.open(str(path), mode="r") as container:
        if not container.streams.video:
            raise RuntimeError("container has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        declared = _declared_frames(container, stream)
        index = 0
        try:
            for frame in container.decode(stream):
                if end is not None and index >= end:
                    break
                if index >= start:
                    if size is not None and (frame.width, frame.height) != size:
                        frame = frame.reformat(width=size[0], height=size[1], format="rgb24")
                    frames.append(frame.to_ndarray(format="rgb24"))
                index += 1
        except Exception as err:  # noqa: BLE001 - a cut-off or corrupt stream: keep what decoded
            late_error = _short(err)
    if not frames:
        raise RuntimeError(f"decoded no frames{f' ({late_error})' if late_error else ''}")
    return np.stack(frames), fps, declared, late_error


def _decode(
    path: Path, short_side: int | None, span: Span | None, expected: int | None, threads: int
) -> tuple[np.ndarray, float]:
    _check_file(path)
    source, declared = _header(path)
    size = target_size(*source, short_side) if source is not None else None
    if expected is None and span is None:
        expected = declared or None
    errors: list[str] = []
    try:
        frames, fps, _ = _decord_read(path, size, span, threads)
    except CurationError:
        raise
    except ImportError as err:
        errors.append(f"decord unavailable ({err})")
    except Exception as err:  # noqa: BLE001 - decord raises DECORDError, RuntimeError, ...
        errors.append(f"decord failed ({_short(err)})")
    else:
        _check_count(path, len(frames), expected)
        return _fit(frames, size, short_side), fps
    try:
        frames, fps, pyav_declared, late_error = _pyav_read(path, size, span)
    except ImportError as err:
        errors.append(f"pyav unavailable ({err})")
    except Exception as err:  # noqa: BLE001 - PyAV raises many FFmpegError subclasses
        errors.append(f"pyav failed ({_short(err)})")
    else:
        if span is not None and len(frames) < span[1] - span[0]:
            why = late_error or "stream ended"
            raise CurationError("truncated", f"'{path}': frames [{span[0]}, {span[1]}) asked, {len(frames)} decoded ({why})")
        if expected is None and span is None:
            expected = pyav_declared or None
        _check_count(path, len(frames), expected, late_error)
        return _fit(frames, size, short_side), fps
    if container_truncated(path):
        raise CurationError("truncated", f"'{path}': the container is cut off; " + "; ".join(errors))
    raise CurationError("decode_error", f"'{path}': " + "; ".join(errors))


def _fit(frames: np.ndarray, size: Size | None, short_side: int | None) -> np.ndarray:
    """Frames decoded without a known header size are resized to ``short_side`` afterwards."""
    if size is not None or short_side is None:
        return frames
    h, w = frames.shape[1:3]
    return _resize_all(frames, target_size(w, h, short_side))


def _check_count(path: Path, got: int, expected: int | None, late_error: str | None = None) -> None:
    if expected is not None and expected > 0 and got < TRUNCATED_FRACTION * expected:
        why = f" ({late_error})" if late_error else ""
        raise CurationError("truncated", f"'{path}': {got} of {expected} expected frames decoded{why}")


def decode_video(
    path: str | Path, short_side: int | None, expected_frames: int | None = None, num_threads: int = 1
) -> tuple[np.ndarray, float]:
    """Decode the whole video as uint8 ``(T, H, W, 3)`` RGB with short side ``short_side``, plus its fps.

    ``short_side=None`` (or one at/above the source's) keeps the source size. ``expected_frames``
    (e.g. the probe's count): fewer than 90% of it decoded raises ``truncated``; without it, the
    container header's count (frames, else duration x fps) is used. Raises
    :class:`CurationError` (``missing``, ``empty_file``, ``truncated`` (also when both decoders fail
    on a file whose container is cut off), ``decode_error`` naming both decoders' errors).
    ``num_threads``: decord's decoder threads (1 suits one-process-per-core pools).
    """
    return _decode(Path(path), short_side, None, expected_frames, num_threads)


def decode_span(path: str | Path, start: int, end: int, short_side: int | None, num_threads: int = 1) -> np.ndarray:
    """Frames ``[start, end)`` at short side ``short_side`` (same sizes and errors as :func:`decode_video`).

    A span reaching past the decodable frames raises ``truncated``.
    """
    if not 0 <= start < end:
        raise ValueError(f"need 0 <= start < end, got [{start}, {end})")
    frames, _ = _decode(Path(path), short_side, (start, end), None, num_threads)
    return frames


def iter_span(path: str | Path, start: int, end: int, short_side: int | None, batch_frames: int = 32,
              num_threads: int = 1) -> Iterator[np.ndarray]:
    """Frames ``[start, end)`` of :func:`decode_span`, yielded ``batch_frames`` at a time (one batch in memory).

    PyAV seeks to the key frame before ``start`` and decodes on, placing frames by their
    timestamps. Streams whose timestamps do not count frames one by one (variable frame rate,
    missing timestamps), or any PyAV failure before the first batch, fall back to
    :func:`decode_span` (decord; the whole span at once). PyAV is preferred here because the frames
    are encoded as they arrive, and libx264 run through PyAV holds far more memory while a decord
    reader is open in the process. Same sizes and errors as :func:`decode_span`.
    """
    if not 0 <= start < end or batch_frames < 1:
        raise ValueError(f"need 0 <= start < end and batch_frames >= 1, got [{start}, {end}), {batch_frames}")
    path = Path(path)
    _check_file(path)
    source, _ = _header(path)
    size = target_size(*source, short_side) if source is not None else None
    pieces = _pyav_seek_span(path, start, end, size, batch_frames)
    try:
        first = next(pieces)
    except _Irregular:
        yield decode_span(path, start, end, short_side, num_threads)
        return
    except StopIteration:
        return
    yield _fit(first, size, short_side)
    for piece in pieces:
        yield _fit(piece, size, short_side)


class _Irregular(Exception):
    """PyAV cannot place this stream's frames by timestamp (or failed before the first frame)."""


def _pyav_seek_span(path: Path, start: int, end: int, size: Size | None, batch_frames: int) -> Iterator[np.ndarray]:
    """Frames ``[start, end)`` by seeking and decoding with PyAV; raises :class:`_Irregular` before the
    first batch when timestamps cannot place them, ``truncated`` when the stream ends early."""
    try:
        import av

        container = av.open(str(path), mode="r")
    except Exception as err:  # noqa: BLE001 - decord gets its turn
        raise _Irregular(str(err)) from None
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        rate = stream.average_rate or stream.guessed_rate
        base, origin = stream.time_base, stream.start_time
        if not rate or base is None or origin is None:
            raise _Irregular("no frame rate, time base or start time")
        fps, tb = float(rate), float(base)

        def index_of(frame: Any) -> int | None:
            return None if frame.pts is None else int(round((frame.pts - origin) * tb * fps))

        batch: list[np.ndarray] = []
        delivered, expected = 0, start
        try:
            if start > 0:
                container.seek(origin + int(start / fps / tb), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                index = index_of(frame)
                if index is None or (index > expected and expected == start and not delivered):
                    raise _Irregular(f"frame at index {index} after seeking to {start}")
                if index < expected:
                    continue
                if index != expected:
                    raise _Irregular(f"timestamps skip from frame {expected} to {index}")
                if size is not None and (frame.width, frame.height) != size:
                    frame = frame.reformat(width=size[0], height=size[1], format="rgb24")
                batch.append(frame.to_ndarray(format="rgb24"))
                expected += 1
                if len(batch) == batch_frames or expected == end:
                    delivered += len(batch)
                    yield np.stack(batch)
                    batch = []
                if expected == end:
                    return
        except _Irregular:
            if delivered:
                raise CurationError("decode_error", f"'{path}': frame timestamps break after frame {expected}") from None
            raise
        except Exception as err:  # noqa: BLE001 - PyAV raises many FFmpegError subclasses
            if not delivered:
                raise _Irregular(str(err)) from None
            raise CurationError("decode_error", f"'{path}': pyav failed at frame {expected} ({_short(err)})") from None
        if not delivered and not batch:
            raise _Irregular("no frame decoded after seeking")
        if batch:
            yield np.stack(batch)
        raise CurationError("truncated", f"'{path}': frames [{start}, {end}) asked, the stream ended at frame {expected}")
