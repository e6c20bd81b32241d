"""Cascaded cut/fade detection and clip splitting (data_curation.cuts) against known truth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from data_curation.cuts import (
    CutDetectorConfig,
    Transition,
    changed_fraction,
    detect_transitions,
    global_shift,
)
from data_curation.clip_spans import split_clips, split_clips_frames
from data_curation.decode import decode_video
from data_curation.records import ClipSpan
from data_curation.synthetic import RawToyConfig, load_truth, write_raw_toy_videos
from vldm.data.toy import ToyVideoConfig, generate_clip
from vldm.io.video_io import encode_mp4, read_video

TOLERANCE = 2  # frames


def _score(detected: list[Transition], cuts: list[int]) -> tuple[int, int]:
    """(true cuts found within TOLERANCE, detections matching no true cut)."""
    used: set[int] = set()
    for c in cuts:
        near = [i for i, t in enumerate(detected) if t.kind == "cut" and abs(t.boundary - c) <= TOLERANCE]
        match = next((i for i in near if i not in used), None)
        if match is not None:
            used.add(match)
    return len(used), len(detected) - len(used)


def test_cuts_found_within_two_frames_on_toy_clips_and_raw_videos(tmp_path) -> None:
    """At least 95% of hard cuts found within +-2 frames, at most 5% false cuts."""
    cfg = CutDetectorConfig()
    n_cuts = found = false = detections = n_cut_clips = 0
    for size in (32, 64):
        for seed in range(32):
            for kind in ("cut", ("clean", "static", "text")[seed % 3]):  # false cuts are counted on all
                frames, meta = generate_clip(7000 + seed, kind, ToyVideoConfig(size=size, num_frames=16 + seed % 9, fps=8))
                if seed % 4 == 1:  # a quarter through H.264 and back (the raw videos below all are)
                    frames, _ = read_video(encode_mp4(frames, 8, 18))
                detected = detect_transitions(frames, 8.0, cfg)
                truth = [meta["cut_frame"]] if kind == "cut" else []
                hit, extra = _score(detected, truth)
                n_cut_clips += kind == "cut"
                n_cuts, found, false = n_cuts + len(truth), found + hit, false + extra
                detections += len(detected)
    assert n_cut_clips >= 60
    # raw synthetic videos (several scenes, cuts and fades), decoded as the pipeline does
    raw_cfg = RawToyConfig(size=64, fps=8, min_scenes=3, max_scenes=3, fade_probability=0.25)
    root = tmp_path / "raw"
    paths = write_raw_toy_videos(root, 14, seed=3, cfg=raw_cfg, captions=False)
    truth = load_truth(root)["videos"]
    n_fades = fades_found = 0
    for path in paths:
        frames, fps = decode_video(path, 128)
        detected = detect_transitions(frames, fps, cfg)
        fades = [t for t in detected if t.kind == "fade"]
        hit, extra = _score([t for t in detected if t.kind == "cut"], truth[path.name]["cuts"])
        fade_hits = sum(any(abs(t.start - a) <= TOLERANCE and abs(t.end - b) <= TOLERANCE for t in fades)
                        for a, b in truth[path.name]["fades"])
        n_cuts, found, detections = n_cuts + len(truth[path.name]["cuts"]), found + hit, detections + len(detected)
        false += extra + len(fades) - fade_hits  # a fade matching no true fade is a false detection too
        n_fades, fades_found = n_fades + len(truth[path.name]["fades"]), fades_found + fade_hits
    recall, false_rate = found / n_cuts, false / max(detections, 1)
    print(f"\ncut detection: {found}/{n_cuts} hard cuts found within +-{TOLERANCE} frames (recall {recall:.3f}), "
          f"{false} false of {detections} detections (false-cut rate {false_rate:.3f})")
    print(f"fades: {fades_found}/{n_fades} found")
    assert n_cuts >= 80 and n_fades >= 3
    assert recall >= 0.95 and false_rate <= 0.05 and fades_found == n_fades


@pytest.mark.parametrize("black_frames", [1, 0])
def test_fades_are_detected(tmp_path, black_frames: int) -> None:
    """Dips through black, and fade-outs straight into fade-ins, are "fade" transitions, not cuts."""
    raw_cfg = RawToyConfig(size=64, fps=8, min_scenes=2, max_scenes=3, min_scene_frames=10, max_scene_frames=16,
                           fade_probability=1.0, fade_frames=3, black_frames=black_frames)
    root = tmp_path / "fades"
    paths = write_raw_toy_videos(root, 5, seed=11, cfg=raw_cfg, captions=False)
    truth = load_truth(root)["videos"]
    n_fades = 0
    for path in paths:
        frames, fps = decode_video(path, 128)
        detected = detect_transitions(frames, fps)
        expected = truth[path.name]["fades"]
        assert [t.kind for t in detected] == ["fade"] * len(expected), (path.name, detected, expected)
        for t, (start, end) in zip(detected, expected):
            assert abs(t.start - start) <= 1 and abs(t.end - end) <= 1, (t, start, end)
        n_fades += len(expected)
    assert n_fades >= 5


def _texture(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 10, w // 10, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (0, 0), 2)


def test_pans_fast_motion_and_flicker_are_not_cuts() -> None:
    world = _texture(0, 400, 2000)
    for speed in (3, 10, 25):  # camera pans over a textured scene at 128 x 228
        pan = np.stack([world[100:228, i * speed : i * speed + 228] for i in range(40)])
        assert detect_transitions(pan, 24.0) == [], speed
    # a fast object (a 60 px disc moving 16 px / frame) crossing a static background
    frames = np.repeat(world[None, :128, :228], 14, axis=0).copy()
    for i, frame in enumerate(frames):
        cv2.circle(frame, (10 + 16 * i, 64), 30, (250, 250, 40), -1)
    assert detect_transitions(frames, 24.0) == []
    # mild flicker: +-10% brightness every other frame
    flicker = np.stack([np.clip(world[:128, :228] * (1.1 if i % 2 else 0.9), 0, 255).astype(np.uint8) for i in range(30)])
    assert detect_transitions(flicker, 24.0) == []


def test_cut_inside_a_pan_is_located_exactly() -> None:
    world = _texture(1, 400, 2000)
    for speed, cut in ((5, 20), (15, 13)):
        a = np.stack([world[100:228, i * speed : i * speed + 228] for i in range(cut)])
        b = np.stack([world[250:378, 1700 - i * speed : 1928 - i * speed] for i in range(40 - cut)])
        detected = detect_transitions(np.concatenate([a, b]), 24.0)
        assert detected == [Transition(cut - 1, cut, "cut")] and detected[0].boundary == cut


def test_cut_detection_works_at_analysis_sizes() -> None:
    for size in (128, 256):
        frames, meta = generate_clip(3, "cut", ToyVideoConfig(size=size, num_frames=24, fps=24, supersample=1))
        detected = detect_transitions(frames, 24.0)
        assert [t.boundary for t in detected] == [meta["cut_frame"]] and detected[0].kind == "cut"


def test_changed_fraction_and_global_shift() -> None:
    world = _texture(2, 96, 160)
    a, b = world[10:74, 10:138], world[13:77, 15:143]  # content moved up 3 and left 5 px
    assert global_shift(a, b, 8) == (-3, -5)
    assert changed_fraction(a, b, 20, 1, (-3, -5)) < 0.01 < changed_fraction(a, b, 20, 0)
    black = np.zeros_like(a)
    assert changed_fraction(black, np.full_like(a, 30), 20, 1) == 1.0
    assert changed_fraction(black, np.full_like(a, 15), 20, 1) == 0.0
    assert global_shift(black, black, 4) == (0, 0)  # flat frames: no shift


def test_transition_convention_and_validation() -> None:
    cut = Transition(9, 10, "cut", 0.9)
    assert cut.boundary == 10 and cut == Transition(9, 10, "cut")  # score is not part of equality
    assert Transition(4, 12, "fade").boundary == 8
    for bad in ((5, 4, "cut"), (-1, 2, "cut"), (1, 2, "wipe")):
        with pytest.raises(ValueError):
            Transition(*bad)
    for bad in (dict(step=0), dict(cheap_size=2), dict(candidate_threshold=0.6, cut_threshold=0.5),
                dict(min_peak_ratio=0.5), dict(dark_level=240), dict(dip_ratio=1.0), dict(max_shift=0.5)):
        with pytest.raises(ValueError):
            CutDetectorConfig(**bad)
    assert detect_transitions(np.zeros((1, 8, 8, 3), np.uint8), 8.0) == []
    with pytest.raises(ValueError):
        detect_transitions(np.zeros((4, 8, 8), np.uint8), 8.0)


def test_split_clips_margins_min_max() -> None:
    transitions = [Transition(19, 20, "cut"), Transition(40, 48, "fade")]
    spans = split_clips_frames(100, transitions, min_frames=5, max_frames=None, margin_frames=1)
    assert spans == [ClipSpan(0, 18), ClipSpan(22, 39), ClipSpan(50, 100)]
    spans = split_clips_frames(100, transitions, min_frames=5, max_frames=None, margin_frames=0)
    assert spans == [ClipSpan(0, 19), ClipSpan(21, 40), ClipSpan(49, 100)]
    # max 20: 50..100 -> 50-70, 70-90, remainder 90-100 kept (>= min 5); 0-18 and 22-39 fit
    spans = split_clips_frames(100, transitions, min_frames=5, max_frames=20, margin_frames=1)
    assert spans == [ClipSpan(0, 18), ClipSpan(22, 39), ClipSpan(50, 70), ClipSpan(70, 90), ClipSpan(90, 100)]
    # min 18: 22-39 (17 frames) dropped; with max 20 the 10-frame remainder is dropped too
    spans = split_clips_frames(100, transitions, min_frames=18, max_frames=20, margin_frames=1)
    assert spans == [ClipSpan(0, 18), ClipSpan(50, 70), ClipSpan(70, 90)]
    # seconds: 8 fps, min 2 s = 16 frames, max 2.5 s = 20 frames
    assert split_clips(100, transitions, 8.0, 2.0, 2.5, 1) == spans[:1] + [ClipSpan(22, 39)] + spans[1:]
    assert split_clips(30, [], 8.0, 1.0, None) == [ClipSpan(0, 30)]
    assert split_clips(30, [Transition(0, 3, "fade"), Transition(28, 29, "cut")], 8.0, 0.1, None, 2) == [ClipSpan(6, 26)]
    with pytest.raises(ValueError):
        split_clips(30, [], 8.0, 2.0, 1.0)


def test_split_clips_invariants_on_random_transitions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 200))
        transitions = []
        for _ in range(int(rng.integers(0, 6))):
            s = int(rng.integers(0, n))
            transitions.append(Transition(s, min(n - 1, s + int(rng.integers(0, 8))), str(rng.choice(["cut", "fade"]))))
        lo, margin = int(rng.integers(1, 20)), int(rng.integers(0, 3))
        hi = None if rng.random() < 0.3 else lo + int(rng.integers(0, 40))
        spans = split_clips_frames(n, transitions, lo, hi, margin)
        for a, b in zip(spans, spans[1:]):
            assert a.end <= b.start  # sorted, disjoint
        for span in spans:
            assert 0 <= span.start < span.end <= n and span.num_frames >= lo
            assert hi is None or span.num_frames <= hi
            for t in transitions:  # no transition frame, nor one within the margin, is in a clip
                assert span.end <= t.start - margin or span.start > t.end + margin


def test_brightness_steps_are_not_cuts() -> None:
    """A textured, panning scene whose gain jumps by +-8% every 3 frames (flicker, auto exposure) has
    no cut; the same scene cut into another still has its cut."""
    from bench.transitions import Motion, no_cut_motion, render_scene

    def analysis(video: np.ndarray) -> np.ndarray:
        return np.stack([cv2.resize(f, (228, 128), interpolation=cv2.INTER_AREA) for f in video])

    frames = analysis(render_scene(101, 60, 320, 180, no_cut_motion("flicker", np.random.default_rng(1))))
    assert detect_transitions(frames, 25.0) == []
    unchecked = detect_transitions(frames, 25.0, CutDetectorConfig(relight_correlation=None))
    assert [t.boundary for t in unchecked] == [6, 18, 30, 42, 54]  # every gain step: what the check removes
    cut = np.concatenate([frames[:40], analysis(render_scene(4, 40, 320, 180, Motion(pan=(1.0, 0.5))))])
    assert [(t.boundary, t.kind) for t in detect_transitions(cut, 25.0)] == [(40, "cut")]
    # the same layout in new colours, or four times darker, is a new shot, not a change of exposure
    teal = np.concatenate([frames[:40], frames[40:] * np.array([0.2, 1.0, 0.4]) + np.array([0, 40, 0])])
    dark = np.concatenate([frames[:40], frames[40:] // 4])
    for video in (teal, dark):
        assert [t.boundary for t in detect_transitions(video.astype(np.uint8), 25.0) if t.kind == "cut"] == [40]
