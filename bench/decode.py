"""Decoding one input for curation: decord and PyAV, at the analysis size and at full size, and probing.

Writes one H.264 clip (``bench.loader.moving_texture``: a panning texture with grain, CRF 18) of
``--seconds`` s at ``--fps`` and ``--width`` x ``--height``, then times what
:mod:`data_curation.decode` does with it: decord resizing inside the decoder to ``--short-side``
(1 and 2 decoder threads), decord at full size, PyAV (its fallback) at both sizes, and
:func:`data_curation.probe.probe_video`. Each is the fastest of ``--repeats`` runs (a shared
machine's interruptions only add time); OpenCV runs on one thread.

    python -m bench.decode                      # 10 s, 24 fps, 854x480
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def fastest(fn: Callable[[], object], repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict[str, float]:
    import cv2

    from bench.loader import moving_texture
    from data_curation.decode import _decord_read, _pyav_read, target_size
    from data_curation.probe import probe_video
    from vldm.io.video_io import write_mp4

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--short-side", type=int, default=128, help="the analysis size (curate.yaml's default)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        frames = moving_texture(0, round(args.seconds * args.fps), args.height, args.width, grain=3.0)
        write_mp4(path, frames, args.fps, crf=18)
        small = target_size(args.width, args.height, args.short_side)
        cases: dict[str, Callable[[], object]] = {
            f"decord {args.short_side} px, 1 thread": lambda: _decord_read(path, small, None, 1),
            f"decord {args.short_side} px, 2 threads": lambda: _decord_read(path, small, None, 2),
            "decord full size, 1 thread": lambda: _decord_read(path, None, None, 1),
            f"pyav {args.short_side} px": lambda: _pyav_read(path, small, None),
            "pyav full size": lambda: _pyav_read(path, None, None),
            "probe": lambda: probe_video(path),
        }
        seconds = {name: fastest(fn, args.repeats) for name, fn in cases.items()}
    print(f"{len(frames)} frames, {args.width}x{args.height}, {args.fps} fps; fastest of {args.repeats}")
    for name, s in seconds.items():
        print(f"  {name:<28} {s:8.3f} s")
    print(json.dumps(seconds))
    return seconds


if __name__ == "__main__":
    main()
