"""mp4/gif writing and robust decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vldm.io.video_io import VideoDecodeError, encode_mp4, read_video, write_gif, write_mp4


def smooth_clip(t: int = 8, h: int = 32, w: int = 48) -> np.ndarray:
    y, x = np.mgrid[:h, :w].astype(np.float32)
    frames = [
        np.stack([128 + 100 * np.sin((x + 2 * i) / 7), 128 + 100 * np.cos(y / 5), 128 + 80 * np.sin((x + y - i) / 9)], -1)
        for i in range(t)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def test_mp4_round_trip_bytes_and_file(tmp_path: Path) -> None:
    clip = smooth_clip()
    data = encode_mp4(clip, fps=12)
    assert data[4:8] == b"ftyp"
    frames, fps = read_video(data)
    assert frames.shape == clip.shape and frames.dtype == np.uint8
    assert fps == pytest.approx(12.0)
    assert psnr(frames, clip) >= 30.0

    path = write_mp4(tmp_path / "clip.mp4", clip, fps=12)
    from_file, fps_file = read_video(path)
    assert np.array_equal(from_file, frames) and fps_file == pytest.approx(12.0)
    first3, _ = read_video(str(path), max_frames=3)
    assert np.array_equal(first3, frames[:3])


def test_pyav_fallback_matches_decord() -> None:
    from vldm.io.video_io import _read_pyav

    data = encode_mp4(smooth_clip(), fps=8)
    frames, fps = _read_pyav(data, None)
    reference, _ = read_video(data)
    assert fps == pytest.approx(8.0)
    assert np.abs(frames.astype(int) - reference.astype(int)).max() <= 2


@pytest.mark.parametrize("case", ["zero", "truncated", "text", "garbage"])
def test_bad_inputs_raise_video_decode_error(tmp_path: Path, case: str) -> None:
    good = encode_mp4(smooth_clip(), fps=8)
    data = {
        "zero": b"",
        "truncated": good[: len(good) // 2],
        "text": b"this is not a video, just some text\n" * 20,
        "garbage": bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
    }[case]
    path = tmp_path / f"{case}.mp4"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(VideoDecodeError) as info:
            read_video(source)
        message = str(info.value)
        assert f"{len(data)} bytes" in message or "0 bytes" in message
        if case != "zero":
            assert "decord" in message and "pyav" in message
    assert isinstance(info.value, ValueError)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        read_video(tmp_path / "nope.mp4")


def test_gif_has_all_frames(tmp_path: Path) -> None:
    clip = smooth_clip(t=6, h=20, w=24)
    path = write_gif(tmp_path / "clip.gif", clip, fps=10)
    with Image.open(path) as im:
        assert im.n_frames == 6 and im.size == (24, 20)
        assert im.info.get("loop") == 0 and im.info.get("duration") == 100
        im.seek(3)
        approx = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(approx - clip[3]).mean() < 20  # palette quantisation only


@pytest.mark.parametrize("shape", [(4, 31, 32, 3), (4, 32, 33, 3)])
def test_odd_size_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="even"):
        encode_mp4(np.zeros(shape, np.uint8), fps=8)


def test_wrong_dtype_or_shape_raises() -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((2, 8, 8, 3), np.float32), fps=8)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        encode_mp4(np.zeros((8, 8, 3), np.uint8), fps=8)


def test_falls_back_to_pyav_without_decord(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` raise ImportError
    clip = smooth_clip()
    frames, fps = read_video(encode_mp4(clip, fps=8))
    assert frames.shape == clip.shape and fps == pytest.approx(8.0)
    with pytest.raises(VideoDecodeError, match="decord unavailable"):
        read_video(b"not a video")


def test_encoding_is_deterministic_whatever_was_encoded_before() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    first = encode_mp4(frames, 8)
    encode_mp4(rng.integers(0, 255, (5, 48, 64, 3), dtype=np.uint8), 8)  # a different size in between
    assert encode_mp4(frames, 8) == first
