"""Probing, prefilters and decoding of curation inputs (data_curation.probe, data_curation.decode)."""

from __future__ import annotations

import dataclasses
import wave
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_curation.decode import decode_span, decode_video, target_size
from data_curation.probe import PREFILTER_NAMES, PrefilterConfig, prefilter, probe_video
from data_curation.records import CurationError, VideoInfo
from vldm.io.video_io import write_mp4


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A moving colour gradient with some texture: every frame differs, neighbours are similar."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (4, 6, 3), dtype=np.uint8), (w + 4 * t, h), interpolation=cv2.INTER_CUBIC)
    return np.stack([base[:, 4 * i : 4 * i + w] for i in range(t)])


def _write(path: Path, frames: np.ndarray, fps: float, fmt: str = "mp4", faststart: bool = False) -> Path:
    """Write H.264 with PyAV; ``faststart`` puts the MP4 index first (a cut-off file still opens)."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format=fmt, options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            container.mux(stream.encode(vf))
        container.mux(stream.encode())
    return path


def _code(fn, *args) -> str:
    with pytest.raises(CurationError) as err:
        fn(*args)
    return err.value.code


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    files = {
        "wide": write_mp4(d / "wide.mp4", _frames(30, 48, 80), 12),
        "fast": _write(d / "fast.mp4", _frames(40, 48, 80, seed=1), 20, faststart=True),
        "mkv": _write(d / "clip.mkv", _frames(40, 64, 96, seed=2), 20, fmt="matroska"),
    }
    for name in ("fast", "mkv"):
        data = files[name].read_bytes()
        cut = d / f"cut_{files[name].name}"
        cut.write_bytes(data[: len(data) // 2])
        files[f"cut_{name}"] = cut
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("not a video\n")
    (d / "random.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    cv2.imwrite(str(d / "still.png"), np.full((40, 60, 3), 120, np.uint8))
    with wave.open(str(d / "tone.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.sin(np.arange(8000) / 5) * 3000).astype(np.int16).tobytes())
    (d / "folder.mp4").mkdir()
    files.update({n: d / f for n, f in [("empty", "empty.mp4"), ("notes", "notes.mp4"), ("random", "random.mkv"),
                                          ("still", "still.png"), ("wav", "tone.wav"), ("folder", "folder.mp4")]})
    files["missing"] = d / "nope.mp4"
    return files


def test_probe_reads_container_metadata(media) -> None:
    info = probe_video(media["wide"])
    assert (info.width, info.height, info.codec) == (80, 48, "h264")
    assert info.fps == pytest.approx(12.0) and abs(info.num_frames - 30) <= 1
    assert info.duration_s == pytest.approx(30 / 12, abs=0.1)
    assert info.size_bytes == media["wide"].stat().st_size and info.path == str(media["wide"])
    assert 0.0 < info.bits_per_pixel < 24.0  # bit_rate / (w h fps): compressed well below raw RGB
    mkv = probe_video(media["mkv"])  # Matroska has no frame count: estimated from duration x fps
    assert mkv.fps == pytest.approx(20.0) and abs(mkv.num_frames - 40) <= 1 and (mkv.width, mkv.height) == (96, 64)


def test_probe_error_codes(media) -> None:
    expected = {"missing": "missing", "empty": "empty_file", "notes": "not_a_video", "random": "not_a_video",
                "still": "not_a_video", "wav": "no_video_stream", "folder": "not_a_video", "cut_mkv": "truncated"}
    got = {name: _code(probe_video, media[name]) for name in expected}
    assert got == expected
    # an MP4 whose index comes first still opens when cut; its mdat box claims bytes the file lacks
    assert _code(probe_video, media["cut_fast"]) == "truncated"


def test_prefilter_names_each_rule() -> None:
    good = VideoInfo("v.mp4", 1000, 5.0, 24.0, 120, 320, 180, "h264", 0.1)
    cfg = PrefilterConfig(min_bits_per_pixel=0.05)
    assert prefilter(good, cfg) is None
    cases = {
        "too_short": dict(duration_s=0.5),
        "too_long": dict(duration_s=601.0),
        "low_fps": dict(fps=6.0),
        "aspect_ratio": dict(width=640, height=180),
        "small": dict(width=96, height=54),
        "low_bits_per_pixel": dict(bits_per_pixel=0.01),
    }
    assert tuple(cases) == PREFILTER_NAMES
    for name, change in cases.items():
        assert prefilter(dataclasses.replace(good, **change), cfg) == name
    # the first failing rule wins; unknown bitrate (0.0) and disabled rules pass
    assert prefilter(dataclasses.replace(good, duration_s=0.5, fps=1.0, width=10), cfg) == "too_short"
    assert prefilter(dataclasses.replace(good, bits_per_pixel=0.0), cfg) is None
    assert prefilter(dataclasses.replace(good, duration_s=9999.0), PrefilterConfig(max_duration_s=None)) is None
    assert prefilter(dataclasses.replace(good, bits_per_pixel=0.01), PrefilterConfig()) is None
    assert prefilter(dataclasses.replace(good, width=180, height=450), cfg) is None  # portrait 2.5:1 is allowed
    for bad in (dict(min_duration_s=-1), dict(min_duration_s=5, max_duration_s=2), dict(max_aspect_ratio=0.5),
                dict(min_short_side=-1), dict(min_fps=-1), dict(min_bits_per_pixel=-0.1)):
        with pytest.raises(ValueError):
            PrefilterConfig(**bad)


def test_target_size_keeps_aspect_and_never_upscales() -> None:
    assert target_size(854, 480, 128) == (228, 128)
    assert target_size(480, 854, 128) == (128, 228)
    assert target_size(64, 64, 128) == (64, 64) and target_size(80, 48, None) == (80, 48)


def test_decode_video_sizes_and_span(media) -> None:
    frames, fps = decode_video(media["wide"], 24)
    assert frames.dtype == np.uint8 and frames.shape == (30, 24, 40, 3) and fps == pytest.approx(12.0)
    full, _ = decode_video(media["wide"], None)
    assert full.shape == (30, 48, 80, 3)
    assert decode_video(media["wide"], 200)[0].shape == (30, 48, 80, 3)  # no upscaling
    # the analysis frames are the full frames, shrunk (codec and resampler differences only)
    ref = np.stack([cv2.resize(f, (40, 24), interpolation=cv2.INTER_AREA) for f in full])
    assert np.abs(frames.astype(int) - ref).mean() < 6
    span = decode_span(media["wide"], 7, 19, 24)
    assert span.shape == (12, 24, 40, 3) and np.array_equal(span, frames[7:19])
    assert decode_video(media["wide"], 14)[0].shape == (30, 14, 23, 3)
    # decord's in-decoder resize fails for a few widths (24 px here); the fallback still gives the size
    tiny, _ = decode_video(media["mkv"], 16)
    assert tiny.shape == (40, 16, 24, 3)
    ref = np.stack([cv2.resize(f, (24, 16), interpolation=cv2.INTER_AREA) for f in decode_video(media["mkv"], None)[0]])
    assert np.abs(tiny.astype(int) - ref).mean() < 2
    assert np.array_equal(decode_span(media["mkv"], 30, 40, 16), tiny[30:40])


def test_decode_errors(media) -> None:
    assert _code(decode_video, media["missing"], 32) == "missing"
    assert _code(decode_video, media["empty"], 32) == "empty_file"
    assert _code(decode_video, media["folder"], 32) == "not_a_video"
    with pytest.raises(CurationError) as err:
        decode_video(media["notes"], 32)
    assert err.value.code == "decode_error" and "decord" in err.value.message and "pyav" in err.value.message
    # cut-off files: fewer than 90% of the expected frames decode
    assert _code(decode_video, media["cut_fast"], 32) == "truncated"
    assert _code(decode_video, media["cut_mkv"], 32) == "truncated"
    assert _code(decode_video, media["wide"], 32, 40) == "truncated"  # 30 of 40 expected
    assert decode_video(media["wide"], 32, 32)[0].shape[0] == 30  # 30 of 32 is within 90%
    assert _code(decode_span, media["wide"], 25, 35, 32) == "truncated"
    with pytest.raises(ValueError):
        decode_span(media["wide"], 5, 5, 32)
