"""Reading and writing short RGB clips: H.264 mp4 (PyAV/libx264), GIF (Pillow), decoding (decord, PyAV).

All frames are ``uint8`` arrays of shape ``(T, H, W, 3)`` in RGB order.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import numpy as np

VideoSource = str | Path | bytes


class VideoDecodeError(ValueError):
    """A video could not be decoded (corrupt, truncated, empty or not a video at all)."""


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"expected frames of shape (T, H, W, 3) with T >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    return np.ascontiguousarray(frames)


def _fps_fraction(fps: float) -> Fraction:
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 10) -> bytes:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames as H.264/yuv420p mp4 bytes; H and W must be even."""
    return encode_mp4_chunks([frames], fps, crf)


def encode_mp4_chunks(chunks: Iterable[np.ndarray], fps: float, crf: int = 10) -> bytes:
    """:func:`encode_mp4` of the concatenated ``chunks`` (each ``(t, H, W, 3)``), one chunk in memory at a time."""
    import av

    rate = _fps_fraction(fps)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream, i = None, 0
        for chunk in chunks:
            chunk = _check_frames(chunk)
            t, h, w, _ = chunk.shape
            if stream is None:
                if h % 2 or w % 2:
                    raise ValueError(f"H.264 with yuv420p needs even height and width, got {h}x{w} (HxW)")
                stream = container.add_stream("libx264", rate=rate)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                stream.options = {"crf": str(int(crf))}
                stream.codec_context.time_base = 1 / rate
            elif (h, w) != (stream.height, stream.width):
                raise ValueError(f"every chunk must have the first one's size {stream.height}x{stream.width}, got {h}x{w}")
            for frame in chunk:
                # convert to yuv420p here: left to the encoder, the conversion's output depended on what the
                # process had encoded before, so the same frames did not always give the same bytes
                vf = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
                vf.pts, vf.time_base = i, 1 / rate
                container.mux(stream.encode(vf))
                i += 1
        if stream is None:
            raise ValueError("no frames to encode")
        container.mux(stream.encode())
    return buf.getvalue()


def write_mp4(path: str | Path, frames: np.ndarray, fps: float, crf: int = 10) -> Path:
    """Write frames to ``path`` as an H.264 mp4 (see :func:`encode_mp4`); returns the path."""
    path = Path(path)
    path.write_bytes(encode_mp4(frames, fps, crf))
    return path


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write frames as a looping GIF. Pillow merges identical consecutive frames into one."""
    from PIL import Image

    frames = _check_frames(frames)
    images = [Image.fromarray(f) for f in frames]
    duration = max(int(round(1000.0 / float(_fps_fraction(fps)))), 10)
    path = Path(path)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return path


def _describe(source: VideoSource, data: bytes | None) -> str:
    where = f"file '{source}'" if not isinstance(source, bytes) else "in-memory bytes"
    if data is None:
        return where
    return f"{where} ({len(data)} bytes, starting {data[:16]!r})"


def _short(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _validate(frames: Any, fps: float) -> tuple[np.ndarray, float]:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3:
        raise RuntimeError(f"decoded no usable frames (array shape {frames.shape})")
    return np.ascontiguousarray(frames, dtype=np.uint8), float(fps)


def _read_decord(data: bytes, max_frames: int | None) -> tuple[np.ndarray, float]:
    import decord

    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
    n = len(reader)
    if n == 0:
        raise RuntimeError("container reports 0 frames")
    n = n if max_frames is None else min(n, max_frames)
    batch = reader.get_batch(list(range(n)))
    # Someone may have switched decord's global bridge to torch/tf; accept anything array-like.
    array = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    return _validate(array, reader.get_avg_fps())


def _read_pyav(data: bytes, max_frames: int | None) -> tuple[np.ndarray, float]:
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.video:
            raise RuntimeError("container has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate:
            raise RuntimeError("video stream has no frame rate")
        frames = []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    return _validate(np.stack(frames) if frames else np.zeros((0,)), float(rate))


def read_video(source: VideoSource, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video file or mp4 bytes into ``(T, H, W, 3)`` uint8 RGB frames and its fps.

    Tries decord first and PyAV if decord is missing or fails. Reads at most ``max_frames``
    frames from the start. Raises :class:`VideoDecodeError` (naming the input and the decoder
    errors) for empty, truncated, corrupt or non-video input, and ``FileNotFoundError`` for a
    missing path.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        source = data
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"video file not found: '{path}'")
        data = path.read_bytes()
    if not data:
        raise VideoDecodeError(f"cannot decode {_describe(source, None)}: it is empty (0 bytes)")
    errors = []
    for name, reader in (("decord", _read_decord), ("pyav", _read_pyav)):
        try:
            return reader(data, max_frames)
        except ImportError as err:
            errors.append(f"{name} unavailable ({err})")
        except Exception as err:  # noqa: BLE001 - decoders raise many unrelated types
            errors.append(f"{name} failed ({_short(err)})")
    raise VideoDecodeError(f"cannot decode {_describe(source, data)}: " + "; ".join(errors))
