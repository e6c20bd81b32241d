"""Decoding a video as a stream of frame batches, in a watched background thread.

Curation analyses each input in one pass over its frames (:mod:`data_curation.analysis`), so the
frames arrive here batch by batch and are never all in memory: a bounded queue between a decoder
thread and the consumer holds at most ``queue_batches`` batches. Each batch carries the frames at
the analysis size and, when a scorer asked for sharper frames (a :class:`StillsRequest`), the
frames of the stills grid at that size; the decoder then decodes at the stills size and the
analysis frames are shrunk from it (``INTER_AREA``).

The consumer waits at most ``timeout_s`` for each batch: a decoder that delivers nothing for that
long (a hung network file system, a stuck native decoder, a pipe that never sends) raises
``CurationError("timeout")``. The decoder thread cannot be killed; it is a daemon thread, told to
stop, and abandoned.

decord reads batches sequentially (resizing inside the decoder); when it is missing or fails,
PyAV decodes the rest, skipping the frames already delivered. Errors are those of
:func:`data_curation.decode.decode_video` (``truncated`` when fewer than 90% of the expected
frames decode, ``decode_error`` naming both decoders' failures).
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from data_curation.decode import (
    TRUNCATED_FRACTION,
    Size,
    _as_numpy,
    _check_file,
    _header,
    _short,
    target_size,
)
from data_curation.probe import container_truncated
from data_curation.records import CurationError, StillsRequest

T = TypeVar("T")


@dataclass
class FrameBatch:
    """Frames ``[start, start + len(frames))`` at the analysis size, and the stills among them
    (absolute frame index -> frame at the stills size)."""

    start: int
    frames: np.ndarray
    stills: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def end(self) -> int:
        return self.start + len(self.frames)


def call_with_timeout(fn: Callable[[], T], timeout_s: float | None, what: str) -> T:
    """``fn()`` in a daemon thread; ``CurationError("timeout")`` naming ``what`` if it takes longer than ``timeout_s``."""
    if timeout_s is None:
        return fn()
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)

    def target() -> None:
        try:
            box.put((True, fn()))
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            box.put((False, err))

    threading.Thread(target=target, name=f"vldm-{what}", daemon=True).start()
    try:
        ok, value = box.get(timeout=timeout_s)
    except queue.Empty:
        raise CurationError("timeout", f"{what} gave no answer within {timeout_s:g} s") from None
    if not ok:
        raise value
    return value


def stills_step(fps: float, request: StillsRequest | None) -> int | None:
    """Frames between stills: ``round(fps * every_s)`` (at least 1); None without a request."""
    if request is None:
        return None
    return max(1, round(fps * request.every_s)) if fps > 0 else 1


class _Stop(Exception):
    """The consumer went away; the decoder thread ends quietly."""


class _Producer:
    """The decoder thread's side: decode, shrink, cut into batches, put them on the queue."""

    def __init__(self, path: Path, analysis_side: int | None, request: StillsRequest | None, fps: float,
                 batch_frames: int, threads: int, out: queue.Queue, stop: threading.Event) -> None:
        self.path, self.request, self.fps = path, request, fps
        self.batch_frames, self.threads, self.out, self.stop = batch_frames, threads, out, stop
        self.analysis_side = analysis_side
        self.step = stills_step(fps, request)
        self.delivered = 0
        self.pending: list[np.ndarray] = []
        self.pending_stills: dict[int, np.ndarray] = {}
        self.analysis_size: Size | None = None

    def put(self, item: Any) -> None:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Stop

    def add(self, frame: np.ndarray) -> None:
        """One decoded frame (at the decode size) joins the current batch."""
        index = self.delivered + len(self.pending)
        h, w = frame.shape[:2]
        if self.analysis_size is None:
            self.analysis_size = target_size(w, h, self.analysis_side)
        if self.step is not None and index % self.step == 0:
            self.pending_stills[index] = frame
        aw, ah = self.analysis_size
        small = frame if (w, h) == (aw, ah) else cv2.resize(frame, (aw, ah), interpolation=cv2.INTER_AREA)
        self.pending.append(small)
        if len(self.pending) >= self.batch_frames:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch = FrameBatch(self.delivered, np.stack(self.pending), self.pending_stills)
        self.delivered += len(self.pending)
        self.pending, self.pending_stills = [], {}
        self.put(("batch", batch))

    def decode_size(self, source: Size | None) -> Size | None:
        if source is None:
            return None
        side = self.analysis_side
        if self.request is not None:
            side = None if side is None else max(side, self.request.short_side)
        return target_size(*source, side)

    def decord(self, size: Size | None) -> None:
        import decord

        kwargs = {} if size is None else {"width": size[0], "height": size[1]}
        try:
            reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.threads, **kwargs)
        except decord.DECORDError as err:
            if size is None or "DECORDArrayCopyFromTo" not in str(err):
                raise
            reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.threads)
        n = len(reader)
        if n == 0:
            raise RuntimeError("container reports 0 frames")
        for start in range(0, n, self.batch_frames):
            if self.stop.is_set():
                raise _Stop
            try:
                frames = _as_numpy(reader.get_batch(list(range(start, min(n, start + self.batch_frames)))))
            except decord.DECORDError as err:
                if "DECORDArrayCopyFromTo" not in str(err) or start > 0:
                    raise
                reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=self.threads)
                frames = _as_numpy(reader.get_batch(list(range(start, min(n, start + self.batch_frames)))))
            for frame in frames:
                self.add(_fit(frame, size))
        self.flush()

    def pyav(self, size: Size | None) -> str | None:
        """Decode from frame ``delivered`` on (earlier frames are skipped); returns a mid-stream error."""
        import av

        skip = self.delivered
        self.pending, self.pending_stills = [], {}
        late_error = None
        with av.open(str(self.path), mode="r") as container:
            if not container.streams.video:
                raise RuntimeError("container has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"
            index = 0
            try:
                for frame in container.decode(stream):
                    if self.stop.is_set():
                        raise _Stop
                    if index >= skip:
                        if size is not None and (frame.width, frame.height) != size:
                            frame = frame.reformat(width=size[0], height=size[1], format="rgb24")
                        self.add(frame.to_ndarray(format="rgb24"))
                    index += 1
            except _Stop:
                raise
            except Exception as err:  # noqa: BLE001 - a cut-off or corrupt stream: keep what decoded
                late_error = _short(err)
        self.flush()
        return late_error

    def run(self, expected: int | None) -> None:
        try:
            _check_file(self.path)
            source, declared = _header(self.path)
            size = self.decode_size(source)
            expected = expected or declared or None
            errors: list[str] = []
            late_error = None
            try:
                self.decord(size)
            except (_Stop, CurationError):
                raise
            except ImportError as err:
                errors.append(f"decord unavailable ({err})")
            except Exception as err:  # noqa: BLE001 - decord raises DECORDError, RuntimeError, ...
                errors.append(f"decord failed ({_short(err)})")
            if errors:
                try:
                    late_error = self.pyav(size)
                except (_Stop, CurationError):
                    raise
                except ImportError as err:
                    errors.append(f"pyav unavailable ({err})")
                except Exception as err:  # noqa: BLE001 - PyAV raises many FFmpegError subclasses
                    errors.append(f"pyav failed ({_short(err)})")
                else:
                    errors = []
            if errors and self.delivered == 0:
                if container_truncated(self.path):
                    raise CurationError("truncated", f"'{self.path}': the container is cut off; " + "; ".join(errors))
                raise CurationError("decode_error", f"'{self.path}': " + "; ".join(errors))
            if self.delivered == 0:
                raise CurationError("decode_error", f"'{self.path}': decoded no frames")
            if expected and self.delivered < TRUNCATED_FRACTION * expected:
                why = f" ({late_error})" if late_error else (f" ({'; '.join(errors)})" if errors else "")
                raise CurationError("truncated", f"'{self.path}': {self.delivered} of {expected} expected frames decoded{why}")
            self.put(("end", self.delivered))
        except _Stop:
            return
        except CurationError as err:
            self._fail(err)
        except Exception as err:  # noqa: BLE001 - anything else is this input's error, not the run's
            self._fail(CurationError("decode_error", f"'{self.path}': {_short(err)}"))

    def _fail(self, err: CurationError) -> None:
        try:
            self.put(("error", err))
        except _Stop:
            pass


def _fit(frame: np.ndarray, size: Size | None) -> np.ndarray:
    frame = np.ascontiguousarray(frame, dtype=np.uint8)
    if size is None or frame.shape[1::-1] == size:
        return frame
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def stream_frames(
    path: str | Path,
    analysis_short_side: int | None,
    fps: float,
    stills: StillsRequest | None = None,
    expected_frames: int | None = None,
    batch_frames: int = 32,
    timeout_s: float | None = 120.0,
    num_threads: int = 1,
    queue_batches: int = 2,
) -> Iterator[FrameBatch]:
    """Batches of the video's frames in order (module doc); ``fps`` (the probe's) places the stills grid.

    ``timeout_s``: the longest wait for one batch (None: no limit). Closing the generator early
    stops the decoder thread.
    """
    if batch_frames < 1 or queue_batches < 1:
        raise ValueError(f"need batch_frames >= 1 and queue_batches >= 1, got {batch_frames}, {queue_batches}")
    if timeout_s is not None and not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s must be a positive number of seconds or None, got {timeout_s}")
    out: queue.Queue = queue.Queue(maxsize=queue_batches)
    stop = threading.Event()
    producer = _Producer(Path(path), analysis_short_side, stills, fps, batch_frames, num_threads, out, stop)
    threading.Thread(target=producer.run, args=(expected_frames,), name="vldm-decode", daemon=True).start()
    try:
        while True:
            try:
                kind, value = out.get(timeout=timeout_s)
            except queue.Empty:
                raise CurationError("timeout", f"'{path}': the decoder delivered no frame for {timeout_s:g} s "
                                               f"({producer.delivered} frames decoded); raise decode_timeout_s "
                                               "if the storage is just slow") from None
            if kind == "batch":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
