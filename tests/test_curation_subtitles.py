"""Subtitles in the text scorer: two-line subtitles at 4-10 % glyph height on moving, textured
frames are found in the clip's stills (short side 224) and flagged ``has_subtitles``, while the
128 px analysis frames alone miss the small ones; a title at the top or text in one frame is not
a subtitle; clips without text score zeros."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from bench.text_sizes import font_path, noise_texture
from data_curation.records import Clip, ClipSpan, StillsRequest
from data_curation.scorers.text import TextScorer

FONT = font_path()
SOURCE = (640, 360)  # width, height of the "source" the stills and analysis frames are cut from
FPS, NUM_FRAMES, STEP = 24, 25, 12  # stills every 0.5 s: clip frames 0, 12, 24
STILLS_SHORT_SIDE = 224  # the scorer's default stills size (bench.text_sizes chose it)
SUBTITLE = "Where were you last night?\nI waited for hours at the station."


@pytest.fixture(scope="module")
def scorer() -> TextScorer:
    return TextScorer()


def texture(seed: int, width: int, height: int) -> np.ndarray:
    """uint8 RGB multi-octave value noise (no flat colour: the detector sees a busy background)."""
    return noise_texture(np.random.default_rng(seed), height, width)


def burn(frame: np.ndarray, text: str, glyph_pct: float, where: str) -> np.ndarray:
    """``text`` in white with a black border, centred, at the ``"bottom"`` or ``"top"`` of ``frame``."""
    h = frame.shape[0]
    px = max(1, round(glyph_pct / 100 * h))
    font = ImageFont.truetype(str(FONT), px)
    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    stroke, spacing = max(1, round(px / 12)), max(1, round(px * 0.2))
    x0, y0, x1, y1 = draw.multiline_textbbox((0, 0), text, font=font, spacing=spacing, stroke_width=stroke)
    x = (frame.shape[1] - (x1 - x0)) / 2 - x0
    y = (0.94 * h - (y1 - y0) - y0) if where == "bottom" else (0.06 * h - y0)
    draw.multiline_text((x, y), text, font=font, fill="white", spacing=spacing, align="center",
                        stroke_width=stroke, stroke_fill="black")
    return np.asarray(img)


def at_short_side(frame: np.ndarray, side: int) -> np.ndarray:
    h, w = frame.shape[:2]
    s = side / min(h, w)
    return cv2.resize(frame, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)


def text_clip(glyph_pct: float | None, where: str = "bottom", text_in: tuple[int, ...] = (0, STEP, 2 * STEP),
              stills: bool = True, seed: int = 0) -> Clip:
    """A panning textured clip at the 128 px analysis size, its stills at ``STILLS_SHORT_SIDE``;
    the text (``glyph_pct`` % of the height, None: none) is burned into clip frames ``text_in``."""
    w, h = SOURCE
    big = texture(seed, w + 4 * NUM_FRAMES, h + 2 * NUM_FRAMES)
    source = []
    for t in range(NUM_FRAMES):
        frame = np.ascontiguousarray(big[2 * t : 2 * t + h, 4 * t : 4 * t + w])
        if glyph_pct is not None and t in text_in:
            frame = burn(frame, SUBTITLE, glyph_pct, where)
        source.append(frame)
    frames = np.stack([at_short_side(f, 128) for f in source])
    grid = {i: at_short_side(source[i], STILLS_SHORT_SIDE) for i in range(0, NUM_FRAMES, STEP)} if stills else {}
    return Clip("feedfacefeedface", 0, "subs.mp4", ClipSpan(0, NUM_FRAMES), float(FPS), frames, stills=grid)


@pytest.mark.parametrize("glyph_pct", [4, 6, 10])
def test_subtitles_are_found_in_the_stills(scorer: TextScorer, glyph_pct: float) -> None:
    got = scorer.score(text_clip(glyph_pct))
    assert got["text_boxes"] >= 1 and got["text_ratio"] > 0, got
    assert got["has_subtitles"] is True, got


def test_small_subtitles_are_missed_at_the_analysis_size_alone(scorer: TextScorer) -> None:
    got = scorer.score(text_clip(4, stills=False))
    assert got == {"text_ratio": 0.0, "text_boxes": 0, "has_subtitles": False}


def test_a_title_at_the_top_or_text_in_one_frame_is_no_subtitle(scorer: TextScorer) -> None:
    title = scorer.score(text_clip(8, where="top"))
    assert title["text_boxes"] >= 1 and title["has_subtitles"] is False, title
    once = scorer.score(text_clip(8, text_in=(STEP,)))
    assert once["text_boxes"] >= 1 and once["has_subtitles"] is False, once


def test_no_text_scores_zeros(scorer: TextScorer) -> None:
    assert scorer.score(text_clip(None)) == {"text_ratio": 0.0, "text_boxes": 0, "has_subtitles": False}


def test_stills_request_and_nearest_stills() -> None:
    from data_curation.scorers.text import nearest_stills, subtitles_persist

    assert TextScorer().stills == StillsRequest(STILLS_SHORT_SIDE, 0.5)
    assert TextScorer(stills_short_side=320, stills_every_s=1.0).stills == StillsRequest(320, 1.0)
    assert TextScorer(stills_short_side=None).stills is None
    stills = {k: np.zeros((1, 1, 3), np.uint8) for k in (0, 12, 24)}
    assert nearest_stills(stills, [0, 12, 24]) == [0, 12, 24]
    assert nearest_stills(stills, [0, 5, 9]) == [0, 12]  # 5 -> 0, 9 -> 12; duplicates dropped
    assert nearest_stills({}, [0, 4]) == []
    assert subtitles_persist(2, 3, 0.5) and not subtitles_persist(1, 3, 0.3) and not subtitles_persist(2, 5, 0.5)


def test_stills_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="stills_short_side"):
        TextScorer(stills_short_side=16)
    with pytest.raises(ValueError, match="stills_every_s"):
        TextScorer(stills_every_s=0)
    with pytest.raises(ValueError, match="subtitle_min_share"):
        TextScorer(subtitle_min_share=0)
    grey = Clip("feedfacefeedface", 0, "x.mp4", ClipSpan(0, 4), 8.0, np.zeros((4, 8, 8, 3), np.uint8),
                stills={0: np.zeros((8, 8), np.uint8)})
    with pytest.raises(ValueError, match=r"Clip.stills\[0\] must be a uint8 \(H, W, 3\) RGB frame"):
        TextScorer().score(grey)


def test_drawtext_subtitles_in_an_h264_video(tmp_path: Path, scorer: TextScorer) -> None:
    """ffmpeg drawtext subtitles (5 % glyph height) in a panning 640x360 H.264 video, decoded as the
    pipeline does: found in stills at the scorer's size, missed in the 128 px analysis frames."""
    pytest.importorskip("imageio_ffmpeg", reason="the ffmpeg binary with drawtext comes with imageio-ffmpeg (dev extra)")
    from bench.text_sizes import panning_frames, render_video
    from data_curation.decode import decode_video

    path = tmp_path / "subs.mp4"
    render_video(path, panning_frames(np.random.default_rng(3), *SOURCE, NUM_FRAMES), SUBTITLE, 18)
    frames, fps = decode_video(path, 128)
    sharp, _ = decode_video(path, scorer.stills.short_side)
    assert sharp.shape[1:3] == (STILLS_SHORT_SIDE, 398) and fps == pytest.approx(FPS)
    clip = Clip("feedfacefeedface", 0, path.name, ClipSpan(0, len(frames)), fps, frames,
                stills={i: sharp[i] for i in range(0, len(sharp), STEP)})
    got = scorer.score(clip)
    assert got["text_boxes"] >= 1 and got["text_ratio"] > 0 and got["has_subtitles"] is True, got
    clip.stills = {}
    assert scorer.score(clip)["text_boxes"] == 0


def test_bench_chooses_the_smallest_side_reaching_the_rate_from_4_percent_up() -> None:
    from bench.text_sizes import choose_side, rate_table

    rows = [{"glyph_pct": g, "side": side, "detected": d, "frames": 3}
            for g, side, d in [(3, 128, 0), (3, 224, 1), (4, 128, 0), (4, 224, 3), (4, 256, 3), (6, 128, 2),
                               (6, 224, 3), (6, 256, 3), (3, 256, 2)]]
    table = rate_table(rows, "detected")
    assert table[4] == {128: 0.0, 224: 1.0, 256: 1.0}
    assert choose_side(table, 4, 0.95) == 224
    assert choose_side(table, 3, 0.95) is None  # 3 % is never found in every frame
