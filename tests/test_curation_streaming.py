"""Streaming curation: clips cut on the fly equal the whole-video split, windows see every
transition, the frames held stay bounded, stills arrive at their size, and writing a clip decodes
the same frames batch by batch."""

from __future__ import annotations

import numpy as np
import pytest

from data_curation.analysis import OVERLAP_FRAMES, WINDOW_FRAMES, Analysis, analyse_stream, merge_overlapping
from data_curation.clip_spans import ClipCutter, split_clips_frames
from data_curation.cuts import Transition, detect_transitions
from data_curation.decode import decode_span, decode_video, iter_span
from data_curation.frame_stream import FrameBatch, stills_step, stream_frames
from data_curation.records import StillsRequest
from vldm.io.video_io import encode_mp4, write_mp4


def scenes(lengths: list[int], h: int = 16, w: int = 24, seed: int = 0) -> np.ndarray:
    """Consecutive scenes of the given lengths: each a different slowly drifting random pattern."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        wide = w + n // 8 + 1
        coarse = rng.integers(0, 256, (4, max(2, wide * 4 // h), 3)).astype(np.float32)
        base = np.clip(cv2.resize(coarse, (wide, h), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
        out += [base[:, i // 8 : i // 8 + w] for i in range(n)]
    return np.stack(out)


def batches_of(frames: np.ndarray, size: int) -> list[FrameBatch]:
    return [FrameBatch(i, frames[i : i + size]) for i in range(0, len(frames), size)]


def test_clip_cutter_matches_the_whole_video_split() -> None:
    """Fed transitions in order with frontiers in between, the cutter gives split_clips_frames' spans."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 400))
        starts = np.sort(rng.choice(n, size=min(n, int(rng.integers(0, 8))), replace=False))
        transitions = [Transition(int(s), min(n - 1, int(s + rng.integers(0, 10))), "fade") for s in starts]
        min_f = int(rng.integers(1, 30))
        max_f = None if rng.random() < 0.3 else int(rng.integers(min_f, 80))
        margin = int(rng.integers(0, 3))
        cutter, got = ClipCutter(min_f, max_f, margin), []
        for t in transitions:
            got += cutter.advance(int(rng.integers(0, t.start + 1)))  # any frontier not past the next start
            got += cutter.transition(t)
        got += cutter.finish(n)
        assert got == split_clips_frames(n, transitions, min_f, max_f, margin)


def test_windows_find_every_cut_and_hold_bounded_frames() -> None:
    """Cuts on and near window edges are each found once; clips match the whole split and the source
    frames; at most a window plus a clip plus a batch of frames is ever held."""
    lengths = [895, 1, 700, 68, 900, 1500, 800]  # cuts at 895, 896 (one-frame shot), 1596, 1664, ...
    frames = scenes(lengths)
    cuts = np.cumsum(lengths)[:-1].tolist()
    result = Analysis([])
    cutter = ClipCutter(8, 240, 1)
    pieces = list(analyse_stream(batches_of(frames, 32), lambda f: detect_transitions(f, 24.0), cutter, result=result))
    assert [t.boundary for t in result.transitions if t.kind == "cut"] == [c for c in cuts if c != 896]
    assert result.num_frames == len(frames)
    expected = split_clips_frames(len(frames), result.transitions, 8, 240, 1)
    assert [span for span, _, _ in pieces] == expected
    for span, clip_frames, _ in pieces:
        np.testing.assert_array_equal(clip_frames, frames[span.start : span.end])
    assert result.peak_held_frames <= WINDOW_FRAMES + 240 + 32
    assert result.peak_held_frames < len(frames) / 2


def test_a_video_shorter_than_a_window_gets_the_whole_video_transitions() -> None:
    frames = scenes([100, 60, 140], seed=3)
    result = Analysis([])
    list(analyse_stream(batches_of(frames, 17), lambda f: detect_transitions(f, 24.0), ClipCutter(4, None, 1),
                        result=result))
    assert result.transitions == detect_transitions(frames, 24.0) == [Transition(99, 100, "cut"), Transition(159, 160, "cut")]


def test_windows_are_checked() -> None:
    with pytest.raises(ValueError, match="overlap"):
        list(analyse_stream([], lambda f: [], ClipCutter(1, None, 0), window_frames=100, overlap_frames=101))
    assert OVERLAP_FRAMES % 2 == 0 and WINDOW_FRAMES > OVERLAP_FRAMES


def test_overlapping_transitions_merge() -> None:
    merged = merge_overlapping([Transition(10, 20, "fade", 1.0), Transition(18, 30, "dissolve", 0.5, "transnetv2"),
                                Transition(40, 41, "cut"), Transition(42, 43, "cut")])
    assert merged == [Transition(10, 30, "fade"), Transition(40, 41, "cut"), Transition(42, 43, "cut")]
    assert merged[0].found_by == "cascade,transnetv2"


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> str:
    frames = scenes([40, 37], h=180, w=320, seed=5)
    return str(write_mp4(tmp_path_factory.mktemp("stream") / "v.mp4", frames, 25.0, crf=12))


def test_stream_gives_the_frames_decode_video_gives(video: str) -> None:
    whole, fps = decode_video(video, 64)
    batches = list(stream_frames(video, 64, fps, batch_frames=16))
    assert [b.start for b in batches] == list(range(0, len(whole), 16))
    np.testing.assert_array_equal(np.concatenate([b.frames for b in batches]), whole)
    assert all(not b.stills for b in batches)


def test_stream_stills_come_at_their_size_on_their_grid(video: str) -> None:
    request = StillsRequest(short_side=144, every_s=0.5)
    batches = list(stream_frames(video, 64, 25.0, stills=request, batch_frames=16))
    stills = {i: s for b in batches for i, s in b.stills.items()}
    step = stills_step(25.0, request)
    assert step == 12 and sorted(stills) == list(range(0, 77, 12))
    assert {s.shape for s in stills.values()} == {(144, 256, 3)}
    assert batches[0].frames.shape[1:] == (64, 114, 3)
    sharp = decode_video(video, 144)[0]
    assert np.abs(stills[24].astype(int) - sharp[24]).mean() < 2.0  # the same frame, decoded at that size


def test_iter_span_gives_decode_span_frames_batch_by_batch(video: str) -> None:
    for start, end in ((0, 10), (33, 77), (50, 51)):
        parts = list(iter_span(video, start, end, None, batch_frames=8))
        assert all(len(p) <= 8 for p in parts)
        np.testing.assert_array_equal(np.concatenate(parts), decode_span(video, start, end, None))
    with pytest.raises(Exception, match="truncated"):
        list(iter_span(video, 70, 90, None))


def test_encoding_in_chunks_gives_the_same_bytes() -> None:
    frames = scenes([20], h=32, w=48, seed=2)
    from vldm.io.video_io import encode_mp4_chunks

    assert encode_mp4_chunks([frames[:7], frames[7:]], 12.0, crf=20) == encode_mp4(frames, 12.0, crf=20)
    with pytest.raises(ValueError, match="size"):
        encode_mp4_chunks([frames[:5], frames[5:, :16]], 12.0)
