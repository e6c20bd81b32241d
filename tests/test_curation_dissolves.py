"""Cross-dissolves in the cut cascade (data_curation.cuts / data_curation.dissolves) against known truth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bench.transitions import Motion, no_cut_motion, render_scene, write_dissolve
from data_curation.clip_spans import split_clips
from data_curation.cuts import CutDetectorConfig, Transition, detect_transitions
from data_curation.decode import decode_video

FPS = 25.0


def _scene(seed: int, frames: int, motion: Motion) -> np.ndarray:
    """A 320x180 scene shrunk to the analysis size (short side 128), as decode_video returns it."""
    video = render_scene(seed, frames, 320, 180, motion)
    return np.stack([cv2.resize(f, (228, 128), interpolation=cv2.INTER_AREA) for f in video])


def _blend(a: np.ndarray, b: np.ndarray, frames: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``a`` then ``b``, the last ``frames`` of ``a`` blended linearly into the first of ``b``
    (xfade's convention: ``frames - 1`` blended frames); returns the video and its first/last blended frame."""
    n = len(a)
    w = (np.arange(1, frames) / frames)[:, None, None, None]
    mixed = (1 - w) * a[n - frames + 1 :].astype(np.float32) + w * b[1:frames].astype(np.float32)
    video = np.concatenate([a[: n - frames + 1], np.round(mixed).astype(np.uint8), b[frames:]])
    return video, (n - frames + 1, n - 1)


def _dissolves(found: list[Transition]) -> list[Transition]:
    return [t for t in found if t.kind == "dissolve"]


@pytest.mark.parametrize("seconds", [0.3, 1.0, 1.5])
def test_exact_blends_are_dissolves_within_three_frames(seconds: float) -> None:
    """Two moving textured scenes blended linearly: one "dissolve" spanning the blended frames (+-3)."""
    frames = int(round(seconds * FPS))
    a = _scene(11, 40 + frames, Motion(pan=(0.8, 0.3), blobs=1, blob_speed=1.0))
    b = _scene(12, 40 + frames, Motion(pan=(-0.6, 0.2), blobs=1, blob_speed=1.0))
    video, (first, last) = _blend(a, b, frames)
    found = detect_transitions(video, FPS)
    assert len(found) == 1 and found[0].kind == "dissolve", (found, first, last)
    assert abs(found[0].start - first) <= 3 and abs(found[0].end - last) <= 3, (found, first, last)
    assert found[0].end - found[0].start < 128  # the overlap of the windows the pipeline streams
    # the clips either side exclude every blended frame
    spans = split_clips(len(video), found, FPS, 0.5, None)
    assert len(spans) == 2 and spans[0].end < found[0].start and spans[1].start > found[0].end + 1
    # with dissolve detection off, the cascade finds nothing here (no hard cut, no fade)
    assert detect_transitions(video, FPS, CutDetectorConfig(detect_dissolves=False)) == []


def test_ffmpeg_xfade_through_h264_and_decode_video(tmp_path) -> None:
    """ffmpeg's xfade dissolve (0.6 s at 29.97 fps, 320x180 H.264), decoded as the pipeline does."""
    fps = 30000 / 1001
    a = render_scene(21, 60, 320, 180, Motion(pan=(1.5, -0.5)))
    b = render_scene(22, 45, 320, 180, Motion(pan=(-1.0, 0.5)), similar_to=21)  # similar colours
    first, last = write_dissolve(tmp_path / "xfade.mp4", a, b, fps, 18 / fps)
    frames, got_fps = decode_video(tmp_path / "xfade.mp4", 128)
    found = detect_transitions(frames, got_fps)
    assert [t.kind for t in found] == ["dissolve"], (found, first, last)
    assert abs(found[0].start - first) <= 3 and abs(found[0].end - last) <= 3, (found, first, last)


def test_dissolve_next_to_a_hard_cut() -> None:
    """A dissolve, 1 s of the new scene, then a hard cut: both found, the cut exactly."""
    a = _scene(31, 50, Motion(pan=(1.0, 0.0)))
    b = _scene(32, 25 + 20, Motion(pan=(0.0, 1.0)))
    c = _scene(33, 30, Motion(pan=(-1.0, 0.0)))
    blended, (first, last) = _blend(a, b, 20)
    video = np.concatenate([blended, c])
    found = detect_transitions(video, FPS)
    assert [t.kind for t in found] == ["dissolve", "cut"], found
    assert abs(found[0].start - first) <= 3 and abs(found[0].end - last) <= 3, (found, first, last)
    assert found[1] == Transition(len(blended) - 1, len(blended), "cut")


@pytest.mark.parametrize("kind", ["lighting_ramp", "fast_pan", "fast_motion"])
def test_lighting_ramps_pans_and_fast_motion_are_not_dissolves(kind: str) -> None:
    motion = no_cut_motion(kind, np.random.default_rng(5))
    video = _scene(41, 100, motion)
    assert detect_transitions(video, FPS) == []


def test_ramp_fit_and_dissolve_config_validation() -> None:
    from data_curation.dissolves import ramp_fit

    weights = np.clip((np.arange(30) - 8) / 12, 0, 1)
    assert ramp_fit(weights, 2)[:2] == (8, 20)
    for bad in (dict(dissolve_size=2), dict(min_dissolve_seconds=0.0), dict(min_dissolve_seconds=3.0),
                dict(dissolve_end_change=0.0), dict(dissolve_context_ratio=0.5), dict(dissolve_min_weight=0.5),
                dict(dissolve_min_fit=0.0), dict(dissolve_max_ramp_error=1.0), dict(dissolve_max_energy_ratio=0.9)):
        with pytest.raises(ValueError):
            CutDetectorConfig(**bad)
    with pytest.raises(ValueError, match="fps"):
        detect_transitions(np.zeros((4, 8, 8, 3), np.uint8), 0.0)


@pytest.mark.parametrize("index", [0, 7])
def test_benchmark_dissolves_between_moving_scenes_located_within_three_frames(tmp_path, index: int) -> None:
    """Benchmark videos (seed 5, 320x180) whose scenes' detail drifts across the dissolve: span within 3 frames."""
    from bench.transitions import make_dissolves

    (case,) = make_dissolves(tmp_path, index + 1, 5, only={index})
    frames, fps = decode_video(case.path, 128)
    found = _dissolves(detect_transitions(frames, fps))
    first, last = case.truth
    assert any(abs(t.start - first) <= 3 and abs(t.end - last) <= 3 for t in found), (found, first, last)


def test_colour_blend_config_validation() -> None:
    for bad in (dict(dissolve_max_fit=0.4), dict(dissolve_min_colour_change=-1.0), dict(dissolve_min_colour_fit=1.5)):
        with pytest.raises(ValueError, match="dissolve_m"):
            CutDetectorConfig(**bad)


def test_blend_span_and_colour_blend_of_an_exact_blend() -> None:
    """The block-mean colours of two drifting scenes mixed by a ramp: the span within a frame, R^2 near 1."""
    from data_curation.dissolves import Thumbnails, blend_span, colour_blend

    a = _scene(51, 60, Motion(pan=(1.5, 0.5), blobs=1))
    b = _scene(52, 60, Motion(pan=(-1.0, 0.5), blobs=1))
    video, (first, last) = _blend(a, b, 30)

    class Frames:
        frames = video

        def cheap(self, i: int) -> np.ndarray:
            return cv2.resize(video[i], (57, 32), interpolation=cv2.INTER_AREA)

    th = Thumbnails(Frames(), 8, 4)
    p, q = blend_span(th, first - 1 + 4, last + 1 - 3)
    assert abs(p - (first - 1)) <= 1 and abs(q - (last + 1)) <= 1, (p, q, first, last)
    change, fit = colour_blend(th, first - 1, last + 1)
    assert change >= 20.0 and fit >= 0.95, (change, fit)
    assert colour_blend(th, 4, 12)[0] < 20.0  # eight frames inside scene a: its colours barely change


@pytest.mark.parametrize("kind", ["zoom", "blob", "flicker"])
def test_zooms_blobs_and_flicker_are_not_dissolves(kind: str) -> None:
    motion = no_cut_motion(kind, np.random.default_rng(7))
    video = _scene(43, 150, motion)
    assert detect_transitions(video, FPS) == []


@pytest.mark.parametrize("index", [27, 31])
def test_benchmark_long_dissolves_between_fast_moving_scenes(tmp_path, index: int) -> None:
    """Benchmark dissolves of 1.4 s (seed 7, 480x270 and 320x180) whose thumbnails decorrelate by motion: within 3 frames."""
    from bench.transitions import make_dissolves

    (case,) = make_dissolves(tmp_path, index + 1, 7, only={index})
    frames, fps = decode_video(case.path, 128)
    found = _dissolves(detect_transitions(frames, fps))
    first, last = case.truth
    assert any(abs(t.start - first) <= 3 and abs(t.end - last) <= 3 for t in found), (found, first, last)
